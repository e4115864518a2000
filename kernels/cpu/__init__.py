"""The C++ sources of the native CPU kernels and, once built, their extension `_adder_cpu`.

`kernels.adder_cpu` is the Python side; `CMakeLists.txt` here is what `pip install` builds.
"""
