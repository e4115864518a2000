// The kernels compiled for AVX-512 (F, DQ, VL; -march=x86-64-v4).
#define ADDERJAX_AVX512 1
#include "adder_kernels.h"
#include "filter_grad.h"
#include "isa.h"

#define ADDERJAX_VF Avx512F
#define ADDERJAX_VF_NARROW Avx512Y
#define ADDERJAX_VD Avx512D
#define ADDERJAX_ISA_FN avx512_kernels
#define ADDERJAX_ISA_NAME "avx512"
#include "isa_kernels.inc"
