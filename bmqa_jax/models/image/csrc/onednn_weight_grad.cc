// The weight gradient of a float32 NHWC/HWIO convolution, grouped or not
// (depthwise: groups = channels), on oneDNN, as an XLA FFI handler
// (bmqa_jax/models/image/onednn_weight_grad.py builds and registers it).
//
// XLA:CPU's own weight gradient of a k×k convolution is its generic loop;
// oneDNN's convolution_backward_weights (the kernel behind torch's CPU
// training) is up to 5× faster at VGG-19's first layers. oneDNN threads with
// OpenMP while XLA threads with its own pool, and the two fight over the cores,
// so each call splits the batch into one chunk per pool thread, runs every
// chunk single-threaded in oneDNN and sums the partial gradients.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t x[4], g[4], w[4];  // NHWC input, NHWC output gradient, HWIO kernel
  int64_t strides[2], pad_lo[2], pad_hi[2];
  int64_t groups;  // feature groups: the kernel's I is the input's C / groups
};

// The HWIO kernel [KH, KW, C/G, O] as oneDNN weights: OIHW dims, or with
// groups GOIHW dims (O/G outputs per group), over the same HWIO memory.
memory::desc HwioDesc(const Geometry& d) {
  const int64_t kh = d.w[0], kw = d.w[1], in = d.w[2], out = d.w[3];
  const auto f32 = memory::data_type::f32;
  if (d.groups == 1)
    return memory::desc({out, in, kh, kw}, f32, memory::format_tag::hwio);
  const int64_t per_group = out / d.groups;
  return memory::desc({d.groups, per_group, in, kh, kw}, f32,
                      memory::dims{per_group, 1, out, kw * in * out, in * out});
}

// dW of images [n0, n1) into `out` (HWIO), on the calling thread only.
void Chunk(const float* x, const float* g, float* out, int64_t n0, int64_t n1,
           const Geometry& d) {
  const int omp_threads = omp_get_max_threads();
  // One thread: XLA's pool runs the chunks side by side. Restored afterwards,
  // because the process has one libgomp (torch's is the same library).
  omp_set_num_threads(1);
  const int64_t n = n1 - n0;
  memory::dims src_dims{n, d.x[3], d.x[1], d.x[2]}, dst_dims{n, d.g[3], d.g[1], d.g[2]};
  const memory::desc wei_hwio = HwioDesc(d);
  const memory::dims wei_dims = wei_hwio.dims();
  memory::dims strides{d.strides[0], d.strides[1]};
  memory::dims pad_lo{d.pad_lo[0], d.pad_lo[1]}, pad_hi{d.pad_hi[0], d.pad_hi[1]};
  auto& eng = Engine();
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  memory::desc src_md(src_dims, f32, tag::nhwc), dst_md(dst_dims, f32, tag::nhwc);
  memory::desc wei_any(wei_dims, f32, tag::any);
  dnnl::convolution_forward::primitive_desc fwd_pd(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                      dnnl::algorithm::convolution_direct, src_md,
                                      wei_any, dst_md, strides, pad_lo, pad_hi),
      eng);
  dnnl::convolution_backward_weights::primitive_desc pd(
      dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct,
                                               src_md, wei_any, dst_md, strides,
                                               pad_lo, pad_hi),
      eng, fwd_pd);
  dnnl::stream stream(eng);
  const int64_t x_image = d.x[1] * d.x[2] * d.x[3], g_image = d.g[1] * d.g[2] * d.g[3];
  memory src(src_md, eng, const_cast<float*>(x + n0 * x_image));
  memory dst(dst_md, eng, const_cast<float*>(g + n0 * g_image));
  memory wei_out(wei_hwio, eng, out);
  const bool reorder = pd.diff_weights_desc() != wei_hwio;
  memory wei = reorder ? memory(pd.diff_weights_desc(), eng) : wei_out;
  dnnl::convolution_backward_weights(pd).execute(
      stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_DIFF_WEIGHTS, wei}});
  if (reorder) dnnl::reorder(wei, wei_out).execute(stream, wei, wei_out);
  stream.wait();
  omp_set_num_threads(omp_threads);
}

// One call's chunks. Whichever thread claims a chunk first runs it: the caller
// claims too and waits only for chunks already running elsewhere, so a pool
// busy with other work (other weight gradients of the same step) never
// deadlocks the call. Shared with the scheduled tasks, which may start after
// the call has returned and then find nothing left to claim.
struct Job {
  const float* x;
  const float* g;
  float* out;
  int64_t n, chunks, size;
  Geometry d;
  std::vector<std::unique_ptr<float[]>> parts;  // chunks 1.. (chunk 0 writes `out`)
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;
  std::string error;

  void Work() {
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      try {
        Chunk(x, g, i == 0 ? out : parts[i - 1].get(), n * i / chunks,
              n * (i + 1) / chunks, d);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        error = e.what();
      }
      if (done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                      int64_t stride_h, int64_t stride_w, int64_t pad_top,
                      int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                      int64_t groups) {
  auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("expected NHWC input and gradient, HWIO kernel");
  if (groups < 1 || xd[3] != wd[2] * groups || wd[3] % groups != 0)
    return ffi::Error::InvalidArgument("kernel channels do not match the groups");
  auto job = std::make_shared<Job>();
  job->d.groups = groups;
  for (int i = 0; i < 4; ++i) {
    job->d.x[i] = xd[i];
    job->d.g[i] = gd[i];
    job->d.w[i] = wd[i];
  }
  job->d.strides[0] = stride_h;
  job->d.strides[1] = stride_w;
  job->d.pad_lo[0] = pad_top;
  job->d.pad_lo[1] = pad_left;
  job->d.pad_hi[0] = pad_bottom;
  job->d.pad_hi[1] = pad_right;
  job->x = x.typed_data();
  job->g = g.typed_data();
  job->out = dw->typed_data();
  job->n = xd[0];
  job->chunks = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), job->n));
  job->size = wd[0] * wd[1] * wd[2] * wd[3];
  for (int64_t i = 1; i < job->chunks; ++i)  // oneDNN overwrites them: no zero fill
    job->parts.emplace_back(new float[job->size]);
  for (int64_t i = 1; i < job->chunks; ++i) pool.Schedule([job] { job->Work(); });
  job->Work();
  {
    std::unique_lock<std::mutex> lock(job->mu);
    job->cv.wait(lock, [&] { return job->done.load() == job->chunks; });
  }
  if (!job->error.empty()) return ffi::Error::Internal("oneDNN: " + job->error);
  for (const auto& part : job->parts)
    for (int64_t k = 0; k < job->size; ++k) job->out[k] += part[k];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BmqaOnednnWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<int64_t>("groups"));
