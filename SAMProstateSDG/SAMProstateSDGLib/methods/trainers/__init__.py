"""Per-method trainers (fine-tuning from the embedding cache); each method module imports its own when asked to train."""
