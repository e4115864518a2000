// The kernels compiled for AVX2 with FMA (-march=x86-64-v3).
#define ADDERJAX_AVX2 1
#include "adder_kernels.h"
#include "filter_grad.h"
#include "isa.h"

#define ADDERJAX_VF Avx2F
#define ADDERJAX_VF_NARROW Avx2F
#define ADDERJAX_VD Avx2D
#define ADDERJAX_ISA_FN avx2_kernels
#define ADDERJAX_ISA_NAME "avx2"
#include "isa_kernels.inc"
