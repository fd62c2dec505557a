// Unity translation unit of the CPU build: Paddle's extension header costs most of the compile time
// (about 13 s on 2 cores), so every operator is compiled in this one file and the header is parsed once.
// The .cu files are added to the build (alignment/ops/_build.py) only for a CUDA Paddle.
#include "logps_op.cc"
#include "sampling_op.cc"
#include "attention_op.cc"
#include "rms_norm_op.cc"
#include "masked_softmax_op.cc"
