"""needle.nn (API.md 6): arrives with the nn/optim/data issue."""
