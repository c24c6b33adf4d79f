"""SLowED on a ``transformers.Trainer``: the callback (events), the runtime patches it installs, checkpoints,
and the in-training safety monitor."""
