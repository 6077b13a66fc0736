"""safetensors dtypes: their registry numbers, bit widths and numpy representations.

The numbering is `enum st_dtype` of core/format/st.h, which the registry publishes (ABI).
Types numpy has no native type for are exposed as raw unsigned integers of the same width:
BF16 as uint16 and the 8-bit floats as uint8, keeping the shape. The sub-byte types (F6_*,
F4) cannot be shaped in bytes, so they are exposed as a flat uint8 array of the packed bytes.
`weightd.tensor_dtype(array)` tells the safetensors dtype of any array the binding returned.
"""

import numpy as np

# name, bits, numpy dtype of the exposed array, True when that is a raw stand-in
_TABLE = [
    ("BOOL", 8, np.bool_, False),
    ("U8", 8, np.uint8, False),
    ("I8", 8, np.int8, False),
    ("U16", 16, np.uint16, False),
    ("I16", 16, np.int16, False),
    ("U32", 32, np.uint32, False),
    ("I32", 32, np.int32, False),
    ("U64", 64, np.uint64, False),
    ("I64", 64, np.int64, False),
    ("F16", 16, np.float16, False),
    ("BF16", 16, np.uint16, True),
    ("F32", 32, np.float32, False),
    ("F64", 64, np.float64, False),
    ("C64", 64, np.complex64, False),
    ("F8_E4M3", 8, np.uint8, True),
    ("F8_E5M2", 8, np.uint8, True),
    ("F8_E8M0", 8, np.uint8, True),
    ("F8_E4M3FNUZ", 8, np.uint8, True),
    ("F8_E5M2FNUZ", 8, np.uint8, True),
    ("F6_E2M3", 6, np.uint8, True),
    ("F6_E3M2", 6, np.uint8, True),
    ("F4", 4, np.uint8, True),
]

NAMES = [row[0] for row in _TABLE]
BITS = {row[0]: row[1] for row in _TABLE}
NUMPY = {row[0]: np.dtype(row[2]) for row in _TABLE}
# The numpy dtype objects by registry number (NUMPY_BY_NUMBER[n] is NUMPY[NAMES[n]]): a list
# indexes faster than a name lookup, for tables of a thousand tensors.
NUMPY_BY_NUMBER = [NUMPY[name] for name in NAMES]
RAW = {row[0] for row in _TABLE if row[3]}
SUBBYTE = {row[0] for row in _TABLE if row[1] % 8}

# torch dtype names (attributes of the torch module) for framework="pt"; absent: no such type.
TORCH = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
    "BF16": "bfloat16", "F32": "float32", "F64": "float64", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


def name_of(number):
    """The dtype name of registry number @number; ValueError when out of range."""
    if not 0 <= number < len(NAMES):
        raise ValueError("unknown safetensors dtype number %d" % number)
    return NAMES[number]


def array_shape(name, shape):
    """The shape of the numpy array exposing a tensor of dtype @name and @shape."""
    if name in SUBBYTE:
        n = 1
        for d in shape:
            n *= d
        return (n * BITS[name] // 8,)
    return tuple(shape)
