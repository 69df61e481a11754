"""Applications on top of the backend: the samprostate CLI, bench, evaluation, the robustness suite."""
