"""The np-mode device (API.md 2.1): data are plain NumPy arrays on the host."""
import numpy as np

__all__ = ["Device", "CPUDevice", "cpu", "default_device", "all_devices"]


class Device:
    """Base class of np-mode devices."""


class CPUDevice(Device):
    """Represents data that sits in CPU memory, as NumPy arrays."""

    def __repr__(self):
        return "needle.cpu()"

    def __hash__(self):
        return self.__repr__().__hash__()

    def __eq__(self, other):
        return isinstance(other, CPUDevice)

    def enabled(self):
        return True

    def zeros(self, *shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)

    def ones(self, *shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)

    def randn(self, *shape):
        return np.random.randn(*shape)

    def rand(self, *shape):
        return np.random.rand(*shape)

    def one_hot(self, n, i, dtype="float32"):
        return np.eye(n, dtype=dtype)[i]

    def empty(self, shape, dtype="float32"):
        return np.empty(shape, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32"):
        return np.full(shape, fill_value, dtype=dtype)


def cpu():
    """Return the CPU device."""
    return CPUDevice()


def default_device():
    return cpu()


def all_devices():
    """Return a list of all available devices."""
    return [cpu()]
