"""Models of the course's later homeworks (API.md 9.3).

ResNet9 needs nn.Conv and LanguageModel needs nn.RNN/LSTM/Transformer; both
arrive with the convolution and sequence issues. The import-time seed below
is part of the course's numbers and is kept from the start.
"""
import os
import sys

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

np.random.seed(0)
