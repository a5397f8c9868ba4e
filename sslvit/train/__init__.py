"""The training loop that every pretraining method plugs into."""
