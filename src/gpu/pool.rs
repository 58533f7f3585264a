//! A buffer pool keyed by (size, usage).
//!
//! Freed tensor buffers go back to the pool and are handed out again for the next tensor of the
//! same byte size, so a loop of identical training steps stops allocating after its first step.
//! [`PoolStats::allocations`] counts every buffer ever created, which tests use to prove that.
//!
//! Of the free buffers of a size, the first in wgpu's order of buffers goes out, not the last
//! freed: a step that ends with the same buffers free (in whatever order it freed them) then
//! hands out the same buffers in the same order as the step before, so that each dispatch binds
//! the same buffers every step and finds its bind group cached (see `Bindings` in
//! `gpu/mod.rs`). Last freed, first out, the assignment changed from step to step, and a
//! ResNet-18 32x32 step created 150-180 bind groups of its 284 dispatches anew, step after step.
//! State that an optimizer swaps every step (SGD's momentum buffers, written into new tensors)
//! settles into the same few buffers too: that step created none from about its 25th on.

use std::collections::{BTreeSet, HashMap};

/// Counters of the pool, for tests and memory reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created since the `Gpu` was made.
    pub allocations: u64,
    /// Bytes currently allocated (in use plus cached).
    pub bytes_allocated: u64,
    /// Bytes sitting free in the pool.
    pub bytes_cached: u64,
    /// Largest `bytes_allocated` seen: the pool's footprint on the device.
    pub peak_bytes: u64,
    /// Largest number of bytes in use at once (`bytes_allocated - bytes_cached`): the tensors
    /// alive together, what PyTorch reports as `max_memory_allocated`.
    pub peak_live_bytes: u64,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    free: HashMap<(u64, wgpu::BufferUsages), BTreeSet<wgpu::Buffer>>,
    pub(crate) stats: PoolStats,
}

impl BufferPool {
    /// Take a free buffer of exactly `size` bytes and `usage`, or create one.
    pub(crate) fn take(
        &mut self,
        device: &wgpu::Device,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        if let Some(buf) = self
            .free
            .get_mut(&(size, usage))
            .and_then(BTreeSet::pop_first)
        {
            self.stats.bytes_cached -= size;
            self.note_live();
            return buf;
        }
        self.stats.allocations += 1;
        self.stats.bytes_allocated += size;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stats.bytes_allocated);
        self.note_live();
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn note_live(&mut self) {
        let live = self.stats.bytes_allocated - self.stats.bytes_cached;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(live);
    }

    /// Return a buffer for reuse.
    pub(crate) fn give(&mut self, buf: wgpu::Buffer) {
        let size = buf.size();
        self.stats.bytes_cached += size;
        self.free
            .entry((size, buf.usage()))
            .or_default()
            .insert(buf);
    }

    /// Destroy every cached buffer.
    pub(crate) fn trim(&mut self) {
        for (_, bufs) in self.free.drain() {
            for b in bufs {
                self.stats.bytes_allocated -= b.size();
                self.stats.bytes_cached -= b.size();
                b.destroy();
            }
        }
    }
}
