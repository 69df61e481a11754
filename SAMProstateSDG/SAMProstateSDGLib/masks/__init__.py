"""Array code on masks and boxes: components, box proposal, the encoder canvas, confidences, metrics."""
