// Redirects the CUDA toolkit header to the emulator (emu/cuda_emu.h).
#pragma once
#include "cuda_emu.h"
