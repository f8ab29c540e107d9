"""Tasks built on the models: summaries, prediction, classification, dense prediction."""
