"""needle.data (API.md 8): arrives with the nn/optim/data issue."""
