//! The browser API (wasm32 only): wasm-bindgen bindings over the same model, classifier and
//! trainer that run natively, on WebGPU.
//!
//! Built by `cargo build --lib --release --target wasm32-unknown-unknown` and
//! `wasm-bindgen --target web --out-dir web/pkg` (see `web/build.sh`). From JavaScript:
//!
//! ```js
//! import init, { Engine, webgpuAvailable } from './pkg/resnet_wgpu.js';
//! await init();
//! const engine = await Engine.create();          // throws a clear error without WebGPU
//! const clf = engine.loadClassifier(bytes, {});  // safetensors bytes; architecture inferred
//! const top5 = await clf.classify(rgba, width, height, 5); // [{index, label, probability}]
//! const trainer = engine.createTrainer(images, labels, 1, 28, 28, classNames, { batchSize: 32 });
//! const m = await trainer.step();                // {step, epoch, loss, accuracy, lr}
//! ```
//!
//! Nothing here blocks: every GPU read-back is awaited (it resolves when the browser has mapped
//! the buffer). Methods that read back return a `Promise`; a second call on the same object while
//! one is pending is rejected with a "busy" error rather than racing.

use crate::classify::{Classifier, preprocessing_metadata};
use crate::data::{self, Augment, Batch, Dataset};
use crate::io::{self, StateDict};
use crate::nn::{ResNet, ResNetConfig, Stem};
use crate::train::{ScheduleKind, TrainConfig, Trainer};
use crate::{Gpu, GpuOptions, Rng};
use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint8Array};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    if !obj.is_object() {
        return None;
    }
    Reflect::get(obj, &JsValue::from_str(key))
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

fn get_f64(obj: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| js_err(format!("option `{key}` must be a number"))),
    }
}

fn get_usize(obj: &JsValue, key: &str) -> Result<Option<usize>, JsValue> {
    match get_f64(obj, key)? {
        Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(Some(v as usize)),
        Some(v) => Err(js_err(format!(
            "option `{key}` must be a whole number, got {v}"
        ))),
        None => Ok(None),
    }
}

fn get_numbers(obj: &JsValue, key: &str) -> Result<Option<Vec<f64>>, JsValue> {
    let Some(v) = get(obj, key) else {
        return Ok(None);
    };
    if let Some(x) = v.as_f64() {
        return Ok(Some(vec![x]));
    }
    if !Array::is_array(&v) {
        return Err(js_err(format!(
            "option `{key}` must be a number or an array of numbers"
        )));
    }
    Array::from(&v)
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| js_err(format!("option `{key}` must hold numbers")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn get_strings(obj: &JsValue, key: &str) -> Result<Option<Vec<String>>, JsValue> {
    let Some(v) = get(obj, key) else {
        return Ok(None);
    };
    if !Array::is_array(&v) {
        return Err(js_err(format!(
            "option `{key}` must be an array of strings"
        )));
    }
    Array::from(&v)
        .iter()
        .map(|x| {
            x.as_string()
                .ok_or_else(|| js_err(format!("option `{key}` must hold strings")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn set(obj: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), &value.into());
}

fn strings_to_js(v: &[String]) -> Array {
    v.iter().map(|s| JsValue::from_str(s)).collect()
}

fn numbers_to_js(v: &[f32]) -> Array {
    v.iter().map(|&x| JsValue::from_f64(x as f64)).collect()
}

/// Whether this browser exposes WebGPU (`navigator.gpu`). An adapter may still be unavailable
/// (blocklisted GPU, disabled flag); [`Engine::create`] says so when it is.
#[wasm_bindgen(js_name = webgpuAvailable)]
pub fn webgpu_available() -> bool {
    let nav = Reflect::get(&js_sys::global(), &JsValue::from_str("navigator")).unwrap_or_default();
    get(&nav, "gpu").is_some()
}

/// The first WebGPU error not caught by an error scope (validation, out of memory, device lost).
/// Browsers only log these as warnings and the results of the failed work read back as zeros, so
/// they are logged with `console.error` and every later call that reads results fails with them.
type GpuErrorSlot = Arc<Mutex<Option<String>>>;

fn check_gpu_error(slot: &GpuErrorSlot) -> Result<(), JsValue> {
    match slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(e) => Err(js_err(format!(
            "WebGPU reported an error, results are invalid: {e}"
        ))),
        None => Ok(()),
    }
}

/// A WebGPU device shared by the classifiers and trainers made from it.
#[wasm_bindgen]
pub struct Engine {
    gpu: Gpu,
    gpu_error: GpuErrorSlot,
}

#[wasm_bindgen]
impl Engine {
    /// Request a WebGPU adapter and device. The device gets WebGPU's default limits, raised to the
    /// adapter's where it offers more for what the kernels use (storage-buffer and buffer sizes,
    /// workgroup limits). Fails with a clear message when WebGPU is unavailable.
    pub async fn create() -> Result<Engine, JsValue> {
        if !webgpu_available() {
            return Err(js_err(
                "WebGPU is not available in this browser (navigator.gpu is missing). Use a browser \
                 with WebGPU enabled (Chrome/Edge 113+, Firefox 141+ on Windows, Safari 26+) over \
                 https or http://localhost.",
            ));
        }
        let gpu = Gpu::new_async(GpuOptions {
            backends: Some(wgpu::Backends::BROWSER_WEBGPU),
            ..Default::default()
        })
        .await
        .map_err(|e| match e {
            crate::Error::NoAdapter(_) => js_err(
                "WebGPU is unavailable: the browser offers no GPU adapter (WebGPU disabled, or the \
                 GPU or driver is blocklisted; Chrome's chrome://gpu page says which).",
            ),
            e => js_err(format!("WebGPU is unavailable: {e}")),
        })?;
        let gpu_error = GpuErrorSlot::default();
        let slot = gpu_error.clone();
        gpu.device()
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let msg = e.to_string();
                web_sys::console::error_1(&JsValue::from_str(&format!(
                    "resnet-wgpu: WebGPU error: {msg}"
                )));
                slot.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(msg);
            }));
        Ok(Engine { gpu, gpu_error })
    }

    /// The adapter and backend, as wgpu reports them.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.gpu.info().to_string()
    }

    /// The device limits that matter to the kernels (what was requested from the adapter).
    pub fn limits(&self) -> Object {
        let l = self.gpu.limits();
        let o = Object::new();
        set(&o, "maxBufferSize", l.max_buffer_size as f64);
        set(
            &o,
            "maxStorageBufferBindingSize",
            l.max_storage_buffer_binding_size as f64,
        );
        set(
            &o,
            "maxStorageBuffersPerShaderStage",
            l.max_storage_buffers_per_shader_stage,
        );
        set(
            &o,
            "maxComputeWorkgroupStorageSize",
            l.max_compute_workgroup_storage_size,
        );
        set(
            &o,
            "maxComputeInvocationsPerWorkgroup",
            l.max_compute_invocations_per_workgroup,
        );
        set(
            &o,
            "maxComputeWorkgroupsPerDimension",
            l.max_compute_workgroups_per_dimension,
        );
        o
    }

    /// Load a model from safetensors bytes (torchvision names; the architecture is inferred as on
    /// native). `options` (all optional): `labels` (one per class), `size` (crop side), `mean`,
    /// `std` (one value or one per channel). Missing options come from the file's metadata
    /// (`labels` as a JSON array, `input_size`, `mean`, `std`) and then from defaults by input
    /// channels: 1 channel → 28 px with Fashion-MNIST statistics; CIFAR stem → 32 px with CIFAR-10
    /// statistics; otherwise 224 px with ImageNet statistics.
    #[wasm_bindgen(js_name = loadClassifier)]
    pub fn load_classifier(
        &self,
        bytes: &[u8],
        options: JsValue,
    ) -> Result<WebClassifier, JsValue> {
        let name = "model.safetensors";
        let dict = io::load_safetensors_bytes(bytes, name).map_err(js_err)?;
        let clf = configure_classifier(&self.gpu, &dict, name, &options)?;
        Ok(WebClassifier::wrap(clf, self.gpu_error.clone()))
    }

    /// A trainer for a new ResNet on the given images (`N*C*H*W` bytes, NCHW, values 0..255) and
    /// labels. `options` (all optional): `widths` ([16, 32, 64, 128]), `layers` ([1, 1, 1, 1]),
    /// `stem` ("cifar" or "imagenet"; "cifar"), `batchSize` (32), `lr` (0.05), `momentum` (0.9),
    /// `weightDecay` (5e-4), `optimizer` ("sgd", "adam", "adamw"), `schedule` ("constant",
    /// "step", "cosine", "onecycle"; "constant"), `epochs` (for the schedule; 1), `augment` (false: pad-4
    /// crop and flip when true), `seed` (0), `mean`/`std` (the data's own statistics).
    #[wasm_bindgen(js_name = createTrainer)]
    #[allow(clippy::too_many_arguments)]
    pub fn create_trainer(
        &self,
        images: Vec<u8>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        classes: Vec<String>,
        options: JsValue,
    ) -> Result<WebTrainer, JsValue> {
        let dataset =
            Dataset::new(images, labels, channels, height, width, classes).map_err(js_err)?;
        if dataset.is_empty() {
            return Err(js_err("the training set is empty"));
        }
        let o = &options;
        let widths = get_numbers(o, "widths")?
            .map(|v| v.into_iter().map(|x| x as usize).collect())
            .unwrap_or_else(|| vec![16, 32, 64, 128]);
        let layers = get_numbers(o, "layers")?
            .map(|v| v.into_iter().map(|x| x as usize).collect())
            .unwrap_or_else(|| vec![1; widths.len()]);
        let stem = match get(o, "stem").and_then(|v| v.as_string()).as_deref() {
            None | Some("cifar") => Stem::Cifar,
            Some("imagenet") => Stem::ImageNet,
            Some(s) => {
                return Err(js_err(format!(
                    "unknown stem {s:?}: expected cifar or imagenet"
                )));
            }
        };
        let config = ResNetConfig::resnet18(dataset.num_classes())
            .with_stem(stem)
            .with_layers(layers)
            .with_widths(widths)
            .with_in_channels(channels);
        let (mean, std) = match (get_numbers(o, "mean")?, get_numbers(o, "std")?) {
            (Some(m), Some(s)) => (
                m.into_iter().map(|x| x as f32).collect(),
                s.into_iter().map(|x| x as f32).collect(),
            ),
            _ => data::channel_stats(&dataset),
        };
        let mut cfg = TrainConfig::new(&mean, &std);
        cfg.batch_size = get_usize(o, "batchSize")?
            .unwrap_or(32)
            .clamp(1, dataset.len());
        cfg.lr = get_f64(o, "lr")?.unwrap_or(0.05) as f32;
        cfg.momentum = get_f64(o, "momentum")?.unwrap_or(0.9) as f32;
        cfg.weight_decay = get_f64(o, "weightDecay")?.unwrap_or(5e-4) as f32;
        cfg.epochs = get_usize(o, "epochs")?.unwrap_or(1).max(1);
        cfg.seed = get_usize(o, "seed")?.unwrap_or(0) as u64;
        if let Some(name) = get(o, "optimizer").and_then(|v| v.as_string()) {
            cfg.optimizer = name.parse().map_err(js_err)?;
        }
        cfg.schedule = match get(o, "schedule").and_then(|v| v.as_string()) {
            Some(name) => name.parse().map_err(js_err)?,
            None => ScheduleKind::Constant,
        };
        let augment = get(o, "augment").map(|v| v.is_truthy()).unwrap_or(false);
        cfg.augment = if augment {
            Augment::crop_flip(&mean, &std)
        } else {
            Augment::normalize(&mean, &std)
        };
        let mut rng = Rng::new(cfg.seed);
        let model = ResNet::new(&self.gpu, config, &mut rng).map_err(js_err)?;
        let steps = Trainer::steps_for(dataset.len(), cfg.batch_size);
        let trainer = Trainer::new(model, cfg, steps);
        Ok(WebTrainer {
            gpu_error: self.gpu_error.clone(),
            config: trainer.model.config().clone(),
            parameters: trainer.model.num_parameters(),
            state: Rc::new(RefCell::new(Some(TrainState {
                trainer,
                dataset,
                queue: VecDeque::new(),
            }))),
            mean,
            std,
            size: height,
        })
    }
}

/// Preprocessing from `options`, then the file's metadata, then defaults by architecture (the
/// last two as [`Classifier::from_state_dict`] does).
fn configure_classifier(
    gpu: &Gpu,
    dict: &StateDict,
    name: &str,
    options: &JsValue,
) -> Result<Classifier, JsValue> {
    let mut clf = Classifier::from_state_dict(gpu, dict, name).map_err(js_err)?;
    if let Some(size) = get_usize(options, "size")? {
        if size == 0 {
            return Err(js_err("the input size must be positive"));
        }
        clf = clf.with_size(size);
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
    let mean = get_numbers(options, "mean")?.map(to_f32);
    let std = get_numbers(options, "std")?.map(to_f32);
    if mean.is_some() || std.is_some() {
        let mean = mean.unwrap_or_else(|| clf.mean.clone());
        let std = std.unwrap_or_else(|| clf.std.clone());
        clf = clf.with_normalization(&mean, &std).map_err(js_err)?;
    }
    if let Some(labels) = get_strings(options, "labels")? {
        clf = clf.with_labels(labels).map_err(js_err)?;
    }
    Ok(clf)
}

/// Take the value out of a shared slot for the duration of an async call, so a second call made
/// meanwhile gets a clear "busy" error instead of a `RefCell` panic.
fn take<T>(slot: &Rc<RefCell<Option<T>>>, what: &str) -> Result<T, JsValue> {
    slot.borrow_mut().take().ok_or_else(|| {
        js_err(format!(
            "the {what} is busy: wait for the previous call's promise"
        ))
    })
}

/// A model with its preprocessing and class names.
#[wasm_bindgen]
pub struct WebClassifier {
    slot: Rc<RefCell<Option<Classifier>>>,
    gpu_error: GpuErrorSlot,
    config: ResNetConfig,
    labels: Vec<String>,
    size: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
    parameters: usize,
}

impl WebClassifier {
    fn wrap(clf: Classifier, gpu_error: GpuErrorSlot) -> WebClassifier {
        WebClassifier {
            gpu_error,
            config: clf.model.config().clone(),
            labels: clf.labels.clone(),
            size: clf.size,
            mean: clf.mean.clone(),
            std: clf.std.clone(),
            parameters: clf.model.num_parameters(),
            slot: Rc::new(RefCell::new(Some(clf))),
        }
    }

    /// Run `f` on the classifier, putting it back afterwards whatever the outcome.
    fn with<F, Fut>(&self, f: F) -> Promise
    where
        F: FnOnce(Classifier) -> Fut + 'static,
        Fut: std::future::Future<Output = (Classifier, Result<JsValue, JsValue>)> + 'static,
    {
        let slot = self.slot.clone();
        let gpu_error = self.gpu_error.clone();
        future_to_promise(async move {
            check_gpu_error(&gpu_error)?;
            let clf = take(&slot, "classifier")?;
            let (clf, result) = f(clf).await;
            *slot.borrow_mut() = Some(clf);
            check_gpu_error(&gpu_error)?;
            result
        })
    }
}

#[wasm_bindgen]
impl WebClassifier {
    /// Top-`k` classes for RGBA pixels (`width * height * 4` bytes, any size): resized so the
    /// shorter side is the input size, center-cropped and normalised as on native. Resolves to an
    /// array of `{index, label, probability}`, most probable first.
    pub fn classify(&self, rgba: Vec<u8>, width: usize, height: usize, k: usize) -> Promise {
        self.with(move |mut clf| async move {
            let r = clf
                .classify_rgba(&rgba, width, height, k)
                .await
                .map_err(js_err)
                .map(|preds| {
                    let out = Array::new();
                    for p in preds {
                        let o = Object::new();
                        set(&o, "index", p.class as u32);
                        set(&o, "label", p.label);
                        set(&o, "probability", p.probability as f64);
                        out.push(&o);
                    }
                    JsValue::from(out)
                });
            (clf, r)
        })
    }

    /// The raw logits (`Float32Array` of `numClasses`) for RGBA pixels, preprocessed as in
    /// [`WebClassifier::classify`].
    pub fn logits(&self, rgba: Vec<u8>, width: usize, height: usize) -> Promise {
        self.with(move |mut clf| async move {
            let r = async {
                let x = clf.preprocess_rgba(&rgba, width, height)?;
                clf.logits(&x)?.read().await
            }
            .await
            .map_err(js_err)
            .map(|v| JsValue::from(Float32Array::from(v.as_slice())));
            (clf, r)
        })
    }

    /// Number of classes.
    #[wasm_bindgen(getter, js_name = numClasses)]
    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    /// Input channels (1 or 3).
    #[wasm_bindgen(getter, js_name = inChannels)]
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// Side of the square crop fed to the network.
    #[wasm_bindgen(getter, js_name = inputSize)]
    pub fn input_size(&self) -> usize {
        self.size
    }

    /// Class names.
    #[wasm_bindgen(getter)]
    pub fn labels(&self) -> Array {
        strings_to_js(&self.labels)
    }

    /// Normalisation mean per channel.
    #[wasm_bindgen(getter)]
    pub fn mean(&self) -> Array {
        numbers_to_js(&self.mean)
    }

    /// Normalisation standard deviation per channel.
    #[wasm_bindgen(getter)]
    pub fn std(&self) -> Array {
        numbers_to_js(&self.std)
    }

    /// The inferred architecture, e.g. `ResNet-18 (basic [2, 2, 2, 2], ...)`.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.config.to_string()
    }

    /// Number of parameters.
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> usize {
        self.parameters
    }
}

struct TrainState {
    trainer: Trainer,
    dataset: Dataset,
    /// The rest of the current epoch's batches.
    queue: VecDeque<Batch>,
}

impl TrainState {
    async fn step(&mut self) -> crate::Result<Object> {
        if self.queue.is_empty() {
            if self.trainer.step_count() > 0 {
                self.trainer.finish_epoch();
            }
            self.queue = self.trainer.epoch_batches(&self.dataset)?.collect();
        }
        let batch = self
            .queue
            .pop_front()
            .expect("an epoch has at least one batch");
        let lr = self.trainer.lr();
        let m = self.trainer.step_async(&batch).await?;
        let o = Object::new();
        set(&o, "step", self.trainer.step_count() as u32);
        set(&o, "epoch", self.trainer.epoch() as u32);
        set(&o, "loss", m.loss);
        set(&o, "accuracy", m.accuracy);
        set(&o, "lr", lr as f64);
        set(&o, "count", m.count as u32);
        Ok(o)
    }

    /// The model's weights as safetensors, with the preprocessing and class names as metadata so
    /// [`Engine::load_classifier`] restores a ready classifier.
    async fn export(&self, mean: &[f32], std: &[f32], size: usize) -> crate::Result<Vec<u8>> {
        let dict: StateDict = self.trainer.model.state_dict_async().await?;
        let meta = preprocessing_metadata(
            &self.dataset.classes,
            mean,
            std,
            size,
            self.trainer.model.config(),
        );
        io::to_safetensors_bytes_with_metadata(&dict, Some(meta))
    }
}

/// Trains a ResNet on images held in memory, one step per call.
#[wasm_bindgen]
pub struct WebTrainer {
    state: Rc<RefCell<Option<TrainState>>>,
    gpu_error: GpuErrorSlot,
    mean: Vec<f32>,
    std: Vec<f32>,
    size: usize,
    config: ResNetConfig,
    parameters: usize,
}

#[wasm_bindgen]
impl WebTrainer {
    /// One optimisation step on the next batch (epochs are reshuffled as they run out). Resolves
    /// to `{step, epoch, loss, accuracy, lr, count}` for that batch.
    pub fn step(&self) -> Promise {
        let slot = self.state.clone();
        let gpu_error = self.gpu_error.clone();
        future_to_promise(async move {
            check_gpu_error(&gpu_error)?;
            let mut st = take(&slot, "trainer")?;
            let r = st.step().await;
            *slot.borrow_mut() = Some(st);
            check_gpu_error(&gpu_error)?;
            r.map(JsValue::from).map_err(js_err)
        })
    }

    /// Run `steps` steps, calling `on_step(metrics)` after each (metrics as from
    /// [`WebTrainer::step`]). Resolves to the last step's metrics.
    pub fn train(&self, steps: usize, on_step: js_sys::Function) -> Promise {
        let slot = self.state.clone();
        let gpu_error = self.gpu_error.clone();
        future_to_promise(async move {
            let mut st = take(&slot, "trainer")?;
            let mut last = JsValue::UNDEFINED;
            let mut result = Ok(());
            for _ in 0..steps {
                if let Err(e) = check_gpu_error(&gpu_error) {
                    result = Err(e);
                    break;
                }
                match st.step().await {
                    Ok(m) => {
                        last = m.into();
                        if let Err(e) = on_step.call1(&JsValue::NULL, &last) {
                            result = Err(e);
                            break;
                        }
                    }
                    Err(e) => {
                        result = Err(js_err(e));
                        break;
                    }
                }
            }
            *slot.borrow_mut() = Some(st);
            result.map(|_| last)
        })
    }

    /// Eval-mode loss and accuracy on held-out images (same layout as the training images).
    /// Resolves to `{loss, accuracy, count}`.
    pub fn evaluate(&self, images: Vec<u8>, labels: Vec<u32>) -> Promise {
        let slot = self.state.clone();
        let gpu_error = self.gpu_error.clone();
        future_to_promise(async move {
            let mut st = take(&slot, "trainer")?;
            let r = async {
                let d = &st.dataset;
                let test = Dataset::new(
                    images,
                    labels,
                    d.channels,
                    d.height,
                    d.width,
                    d.classes.clone(),
                )?;
                let batch = st.trainer.config.batch_size.max(64);
                st.trainer.evaluate_async(&test, batch).await
            }
            .await;
            *slot.borrow_mut() = Some(st);
            check_gpu_error(&gpu_error)?;
            let m = r.map_err(js_err)?;
            let o = Object::new();
            set(&o, "loss", m.loss);
            set(&o, "accuracy", m.accuracy);
            set(&o, "count", m.count as u32);
            Ok(o.into())
        })
    }

    /// The trained weights as safetensors bytes (`Uint8Array`), with labels, normalisation and
    /// input size in the metadata: `engine.loadClassifier(bytes, {})` turns them into a classifier.
    #[wasm_bindgen(js_name = exportSafetensors)]
    pub fn export_safetensors(&self) -> Promise {
        let slot = self.state.clone();
        let (mean, std, size) = (self.mean.clone(), self.std.clone(), self.size);
        future_to_promise(async move {
            let st = take(&slot, "trainer")?;
            let r = st.export(&mean, &std, size).await;
            *slot.borrow_mut() = Some(st);
            r.map(|b| JsValue::from(Uint8Array::from(b.as_slice())))
                .map_err(js_err)
        })
    }

    /// The architecture being trained.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.config.to_string()
    }

    /// Number of parameters.
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> usize {
        self.parameters
    }
}
