"""needle.optim (API.md 7): arrives with the nn/optim/data issue."""
