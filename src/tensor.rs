//! [`Tensor`]: a shape, a dtype and a shared GPU buffer. Contiguous, row-major (NCHW for images).
//!
//! Cloning a tensor clones a handle, not the data. When the last handle drops, the buffer returns
//! to the [`Gpu`]'s pool for reuse.

use crate::gpu::Gpu;
use crate::{Error, Result};
use std::sync::Arc;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: activations, parameters, gradients.
    F32,
    /// 32-bit unsigned integer: class labels, max-pool argmax indices.
    U32,
}

pub(crate) struct Storage {
    buf: Option<wgpu::Buffer>,
    gpu: Gpu,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.gpu.release(b);
        }
    }
}

/// A GPU tensor.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Arc<Storage>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// An uninitialised tensor (contents unspecified: a recycled buffer). Kernels that write every
    /// element use this for their outputs.
    // See `Gpu::build` on `Arc` with wasm32's non-`Send` handles.
    #[allow(clippy::arc_with_non_send_sync)]
    pub(crate) fn uninit(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        op: &'static str,
    ) -> Result<Tensor> {
        let n = numel(shape);
        if n == 0 {
            return Err(Error::shape(op, format!("empty tensor of shape {shape:?}")));
        }
        let buf = gpu.alloc_storage(n as u64 * 4, || format!("{op}: tensor of shape {shape:?}"))?;
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype,
            storage: Arc::new(Storage {
                buf: Some(buf),
                gpu: gpu.clone(),
            }),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let t = Self::uninit(gpu, shape, DType::F32, "zeros")?;
        gpu.clear(t.buffer());
        Ok(t)
    }

    /// A tensor filled with `value`, by a kernel recorded with the rest of the work (an upload
    /// would first submit everything recorded so far, splitting a training step in two).
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = Self::uninit(gpu, shape, DType::F32, "full")?;
        crate::ops::fill(&t, value)?;
        Ok(t)
    }

    /// Upload f32 data of the given shape.
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::upload(
            gpu,
            shape,
            DType::F32,
            bytemuck::cast_slice(data),
            data.len(),
        )
    }

    /// Upload u32 data (labels, indices) of the given shape.
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::upload(
            gpu,
            shape,
            DType::U32,
            bytemuck::cast_slice(data),
            data.len(),
        )
    }

    fn upload(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        bytes: &[u8],
        len: usize,
    ) -> Result<Tensor> {
        if numel(shape) != len {
            return Err(Error::shape(
                "upload",
                format!(
                    "shape {shape:?} holds {} elements but {len} were given",
                    numel(shape)
                ),
            ));
        }
        let t = Self::uninit(gpu, shape, dtype, "upload")?;
        gpu.write(t.buffer(), bytes);
        Ok(t)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device this tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.storage.gpu
    }

    /// The GPU buffer (at least `numel * 4` bytes).
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage
            .buf
            .as_ref()
            .expect("storage buffer present until drop")
    }

    /// Whether two tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// A view of the same data with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} elements) as {shape:?}",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype: self.dtype,
            storage: self.storage.clone(),
        })
    }

    /// Whether this handle is the only one to its buffer (no clone, reshape or saved copy
    /// shares it), so that writing over the contents cannot be observed elsewhere.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.storage) == 1
    }

    /// A copy of the data in a new buffer.
    pub fn deep_clone(&self) -> Result<Tensor> {
        let t = Self::uninit(self.gpu(), &self.shape, self.dtype, "deep_clone")?;
        self.gpu()
            .copy(self.buffer(), t.buffer(), self.numel() as u64 * 4);
        Ok(t)
    }

    /// Overwrite the contents with `data` (same element count).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        self.expect_dtype("write", DType::F32)?;
        if data.len() != self.numel() {
            return Err(Error::shape(
                "write",
                format!(
                    "tensor {:?} holds {} elements but {} were given",
                    self.shape,
                    self.numel(),
                    data.len()
                ),
            ));
        }
        self.gpu().write(self.buffer(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copy `src`'s contents into this tensor (same element count), ordered with recorded work.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.numel() != self.numel() || src.dtype != self.dtype {
            return Err(Error::shape(
                "copy_from",
                format!(
                    "cannot copy {:?} {:?} into {:?} {:?}",
                    src.shape, src.dtype, self.shape, self.dtype
                ),
            ));
        }
        self.gpu()
            .copy(src.buffer(), self.buffer(), self.numel() as u64 * 4);
        Ok(())
    }

    /// Read the f32 contents back to the host (async; works on the web).
    pub async fn read(&self) -> Result<Vec<f32>> {
        self.expect_dtype("read", DType::F32)?;
        let bytes = self
            .gpu()
            .read_bytes(self.buffer(), self.numel() as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Read several f32 tensors of one device back to the host with a single submit and wait
    /// (async; works on the web).
    pub async fn read_all(tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        if tensors.is_empty() {
            return Ok(Vec::new());
        }
        Tensor::start_read_all(tensors)?.finish().await
    }

    /// Start reading several f32 tensors back (one submit, no wait); see [`Tensor::read_all`].
    pub(crate) fn start_read_all(tensors: &[&Tensor]) -> Result<PendingRead> {
        let Some(first) = tensors.first() else {
            return Err(Error::Invalid("start_read_all: no tensors".into()));
        };
        for t in tensors {
            t.expect_dtype("read_all", DType::F32)?;
            t.expect_same_gpu("read_all", first)?;
        }
        let srcs: Vec<(&wgpu::Buffer, u64)> = tensors
            .iter()
            .map(|t| (t.buffer(), t.numel() as u64 * 4))
            .collect();
        Ok(PendingRead(first.gpu().start_read(&srcs)))
    }

    /// Read u32 contents back to the host (async).
    pub async fn read_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype("read_u32", DType::U32)?;
        let bytes = self
            .gpu()
            .read_bytes(self.buffer(), self.numel() as u64 * 4)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocking [`Tensor::read`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        pollster::block_on(self.read())
    }

    /// Blocking [`Tensor::read_u32`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        pollster::block_on(self.read_u32())
    }

    /// Error unless the dtype is `dtype`.
    pub(crate) fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::shape(
                op,
                format!(
                    "expected a {dtype:?} tensor, got {:?} {:?}",
                    self.dtype, self.shape
                ),
            ));
        }
        Ok(())
    }

    /// Error unless the tensor is f32 of rank `rank`.
    pub(crate) fn expect_f32_rank(&self, op: &'static str, name: &str, rank: usize) -> Result<()> {
        if self.dtype != DType::F32 || self.rank() != rank {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be an f32 tensor of rank {rank}, got {:?} {:?}",
                    self.dtype, self.shape
                ),
            ));
        }
        Ok(())
    }

    /// Error unless the tensor is f32 of `shape`, which is `of`'s shape (`of` as "x's" or "the
    /// output's").
    pub(crate) fn expect_f32_shape(
        &self,
        op: &'static str,
        name: &str,
        of: &str,
        shape: &[usize],
    ) -> Result<()> {
        if self.dtype != DType::F32 || self.shape != shape {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be an f32 tensor of {of} shape {shape:?}, got {:?} {:?}",
                    self.dtype, self.shape
                ),
            ));
        }
        Ok(())
    }

    /// Error unless both tensors are on the same device.
    pub(crate) fn expect_same_gpu(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if !Arc::ptr_eq(&self.gpu().0, &other.gpu().0) {
            return Err(Error::shape(op, "tensors live on different devices"));
        }
        Ok(())
    }

    /// The 4 dimensions of an NCHW tensor.
    pub(crate) fn nchw(&self, op: &'static str, name: &str) -> Result<[usize; 4]> {
        self.expect_f32_rank(op, name, 4)?;
        Ok([self.shape[0], self.shape[1], self.shape[2], self.shape[3]])
    }
}

/// A read-back of f32 tensors in flight (see [`Tensor::start_read_all`]).
pub(crate) struct PendingRead(crate::gpu::Readback);

impl PendingRead {
    /// The tensors' values, in order.
    pub(crate) async fn finish(self) -> Result<Vec<Vec<f32>>> {
        let bytes = self.0.finish().await?;
        Ok(bytes
            .iter()
            .map(|b| bytemuck::pod_collect_to_vec(b))
            .collect())
    }
}
