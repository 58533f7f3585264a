//! Opt-in GPU timing of every dispatch with timestamp queries.
//!
//! With profiling on, every dispatch is recorded in its own compute pass (untimed ones share
//! one), which gets `ComputePassTimestampWrites` at the beginning and the end: timed pass `i` of
//! the pending encoder writes queries `2i` and `2i + 1` of the query sets (sets of
//! [`QUERIES_PER_SET`] queries, added as more dispatches are recorded). When the encoder is
//! submitted ([`Gpu::flush`]) the used queries are resolved and copied into a small staging
//! buffer, kept with the kernel names until [`Gpu::finish_profiling`] maps them all, so any number
//! of dispatches and flushes works and nothing waits on the GPU before the end. The query sets
//! are reused by the next encoder.
//!
//! When profiling is off, the dispatch path only checks one `Option` under a lock it already holds.

use super::{Gpu, Pending, lock};
use crate::{Error, Result};

/// Queries per query set (WebGPU's maximum); two per dispatch.
const QUERIES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;
/// Bytes of one resolved timestamp.
const TIMESTAMP_BYTES: u64 = 8;

/// GPU time of one dispatch, from [`Gpu::finish_profiling`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// Shader file under `shaders/`, e.g. `conv.wgsl`.
    pub file: &'static str,
    /// Entry point name.
    pub entry: &'static str,
    /// GPU nanoseconds between the start and the end of the dispatch's compute pass (never
    /// negative: a driver reporting an end before the start gives 0).
    pub nanos: f64,
    /// When the pass started: GPU nanoseconds after the start of the first dispatch timed since
    /// [`Gpu::start_profiling`]. The last dispatch's `start + nanos` is the GPU time the timed
    /// work spanned, gaps between dispatches included ([`gpu_span_nanos`]).
    pub start: f64,
}

/// GPU nanoseconds from the start of the first of `kernels` to the end of the last (0 for none):
/// their summed `nanos` plus the device's idle time between them (barriers, pass boundaries,
/// waiting on the host between submissions).
pub fn gpu_span_nanos(kernels: &[KernelTime]) -> f64 {
    kernels
        .iter()
        .map(|k| k.start + k.nanos)
        .fold(0.0, f64::max)
}

/// Profiling state, kept in [`Pending`] so the dispatch path reaches it under the lock it holds.
pub(super) struct Profiler {
    /// Query sets with their `QUERY_RESOLVE` buffers; `sets[i]` serves passes
    /// `i * QUERIES_PER_SET / 2 ..` of the pending encoder.
    sets: Vec<(wgpu::QuerySet, wgpu::Buffer)>,
    /// (file, entry) of each timed pass of the pending encoder, in recording order.
    labels: Vec<(&'static str, &'static str)>,
    /// Submitted encoders' timestamps: a staging buffer of `2 * labels.len()` u64 values each.
    resolved: Vec<(wgpu::Buffer, Vec<(&'static str, &'static str)>)>,
}

impl Profiler {
    fn new() -> Self {
        Profiler {
            sets: Vec::new(),
            labels: Vec::new(),
            resolved: Vec::new(),
        }
    }

    /// The timestamp writes for the next pass of the pending encoder, which runs `kernel`.
    pub(super) fn next_pass(
        &mut self,
        device: &wgpu::Device,
        kernel: &super::Kernel,
    ) -> wgpu::ComputePassTimestampWrites<'_> {
        let passes_per_set = (QUERIES_PER_SET / 2) as usize;
        let pass = self.labels.len();
        let (set, slot) = (pass / passes_per_set, (pass % passes_per_set) as u32);
        if set == self.sets.len() {
            let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profiler"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES_PER_SET,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profiler resolve"),
                size: QUERIES_PER_SET as u64 * TIMESTAMP_BYTES,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            self.sets.push((query_set, resolve));
        }
        self.labels.push((kernel.file, kernel.entry));
        wgpu::ComputePassTimestampWrites {
            query_set: &self.sets[set].0,
            beginning_of_pass_write_index: Some(2 * slot),
            end_of_pass_write_index: Some(2 * slot + 1),
        }
    }

    /// Record, at the end of `encoder` (about to be submitted), the resolve of every query its
    /// passes wrote and their copy to a staging buffer read by [`Gpu::finish_profiling`].
    pub(super) fn resolve(&mut self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder) {
        if self.labels.is_empty() {
            return;
        }
        let queries = 2 * self.labels.len() as u64;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profiler read-back"),
            size: queries * TIMESTAMP_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut offset = 0;
        for (query_set, resolve) in &self.sets {
            let n = (queries - offset).min(QUERIES_PER_SET as u64);
            if n == 0 {
                break;
            }
            encoder.resolve_query_set(query_set, 0..n as u32, resolve, 0);
            encoder.copy_buffer_to_buffer(
                resolve,
                0,
                &staging,
                offset * TIMESTAMP_BYTES,
                n * TIMESTAMP_BYTES,
            );
            offset += n;
        }
        self.resolved
            .push((staging, std::mem::take(&mut self.labels)));
    }
}

impl Gpu {
    /// Whether the device can time dispatches ([`wgpu::Features::TIMESTAMP_QUERY`], requested
    /// by [`Gpu::new`] whenever the adapter offers it).
    pub fn profiling_supported(&self) -> bool {
        self.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Start timing every dispatch recorded from now on (work recorded before is submitted
    /// first, untimed). Restarting discards the timings gathered so far. Errors when the device
    /// lacks timestamp queries; see [`Gpu::profiling_supported`].
    pub fn start_profiling(&self) -> Result<()> {
        if !self.profiling_supported() {
            return Err(Error::Invalid(format!(
                "GPU profiling needs timestamp queries, which {} does not offer",
                self.info()
            )));
        }
        self.flush();
        lock(&self.0.pending).profiler = Some(Profiler::new());
        Ok(())
    }

    /// Whether [`Gpu::start_profiling`] is in effect.
    pub fn is_profiling(&self) -> bool {
        lock(&self.0.pending).profiler.is_some()
    }

    /// Stop profiling, submit the recorded work, wait for it and return the GPU time of each
    /// dispatch since [`Gpu::start_profiling`], in recording order (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_profiling(&self) -> Result<Vec<KernelTime>> {
        pollster::block_on(self.finish_profiling_async())
    }

    /// [`Gpu::finish_profiling`], asynchronously (the only way on wasm32). Errors when profiling
    /// was not started.
    pub async fn finish_profiling_async(&self) -> Result<Vec<KernelTime>> {
        let profiler = {
            let mut pending = lock(&self.0.pending);
            // Resolve the pending encoder's queries and take the profiler out under one lock, so
            // no dispatch recorded after this point is timed or left unresolved.
            let Pending {
                encoder, profiler, ..
            } = &mut *pending;
            let mut profiler = profiler
                .take()
                .ok_or_else(|| Error::Invalid("finish_profiling without start_profiling".into()))?;
            if let Some(enc) = encoder.as_mut() {
                profiler.resolve(&self.0.device, enc);
            }
            profiler
        };
        self.flush();
        let mut receivers = Vec::with_capacity(profiler.resolved.len());
        for (staging, _) in &profiler.resolved {
            let (tx, rx) = futures_channel::oneshot::channel();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        let period = self.0.queue.get_timestamp_period() as f64;
        let mut times = Vec::new();
        let mut first: Option<u64> = None;
        for ((staging, labels), rx) in profiler.resolved.iter().zip(receivers) {
            rx.await
                .map_err(|_| Error::Gpu("buffer mapping was cancelled".into()))?
                .map_err(|e| Error::Gpu(format!("mapping profiler timestamps failed: {e}")))?;
            {
                let view = staging
                    .get_mapped_range(..)
                    .map_err(|e| Error::Gpu(format!("reading profiler timestamps failed: {e}")))?;
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
                times.extend(labels.iter().zip(ticks.chunks_exact(2)).map(
                    |(&(file, entry), t)| {
                        let origin = *first.get_or_insert(t[0]);
                        KernelTime {
                            file,
                            entry,
                            nanos: t[1].saturating_sub(t[0]) as f64 * period,
                            start: t[0].saturating_sub(origin) as f64 * period,
                        }
                    },
                ));
            }
            staging.unmap();
            staging.destroy();
        }
        for (query_set, resolve) in &profiler.sets {
            query_set.destroy();
            resolve.destroy();
        }
        Ok(times)
    }
}
