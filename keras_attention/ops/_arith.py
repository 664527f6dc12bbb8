"""Integer arithmetic shared by the attention kernels, on Python ints or
scalar tensors."""


def ceil_div(a, b):
    """`ceil(a / b)` for non-negative `a` and positive `b`."""
    return (a + b - 1) // b
