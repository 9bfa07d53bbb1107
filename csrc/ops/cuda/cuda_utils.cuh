// Launch helpers shared by bd_kernels' CUDA files.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace bd_kernels {

constexpr int kThreads = 256;

// Grid for a grid-stride loop over `n` elements: enough blocks to fill the device, no more.
inline int blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, sms * 8)));
}

// Sum of `v` over the block (all threads must call); result valid in thread 0.
template <typename T>
__device__ inline T block_sum(T v, T* shared) {
  for (int off = warpSize / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffff, v, off);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + warpSize - 1) / warpSize;
  v = threadIdx.x < warps ? shared[threadIdx.x] : T(0);
  if (warp == 0)
    for (int off = warpSize / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffff, v, off);
  __syncthreads();
  return v;
}

template <typename T, bool kMax>
__device__ inline T block_extreme(T v, T* shared) {
  // NaN wins, as in torch's amin/amax
  auto pick = [](T a, T b) { return (a != a || b != b) ? (a != a ? a : b) : (kMax ? (a > b ? a : b) : (a < b ? a : b)); };
  for (int off = warpSize / 2; off > 0; off /= 2) v = pick(v, __shfl_down_sync(0xffffffff, v, off));
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + warpSize - 1) / warpSize;
  v = threadIdx.x < warps ? shared[threadIdx.x] : shared[0];
  if (warp == 0)
    for (int off = warpSize / 2; off > 0; off /= 2) v = pick(v, __shfl_down_sync(0xffffffff, v, off));
  __syncthreads();
  return v;
}

// Address of element k of channel c in a [outer, C, inner] tensor (NCHW: inner = H*W;
// [N,C] and channels_last: inner = 1, outer = N*H*W).
__device__ inline int64_t channel_element(int64_t k, int64_t c, int64_t C, int64_t inner) {
  return (k / inner) * C * inner + c * inner + (k % inner);
}

}  // namespace bd_kernels
