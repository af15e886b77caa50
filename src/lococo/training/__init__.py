"""Training LoCoCo heads (the base model stays frozen): the recipe (`config`), the loop (`loop`),
checkpoints (`checkpoint`) and the ``lococo train`` command (`cli`)."""
