//! What the Vulkan driver's compiler made of the kernels: the statistics it reports for each
//! compiled pipeline through `VK_KHR_pipeline_executable_properties` (NVIDIA: register count,
//! among others; Mesa: instruction, spill and register counts), for every conv tile and pass, the
//! memory-bound kernels and the optimizer's. Register counts bound how many workgroups share a
//! compute unit, which timings alone cannot show.
//!
//! `cargo run --release --example kernel_stats -- [--json PATH] [--only TEXT] [--isa DIR]`
//!
//! `--only` keeps the kernels whose label or entry point contains TEXT; `--isa` writes what the
//! driver shows of each compiled pipeline (its internal representations: on Mesa's RADV the
//! NIR and the GPU's assembly) to one file per kernel under DIR, for
//! `scripts/kernel-stats/loops.py`, which counts the instructions of each loop by kind.
//!
//! Without a GPU, Mesa's RADV compiles for an AMD GPU it does not have (a "null device"): with
//! Mesa 22-25, `RADV_FORCE_FAMILY=navi31` (`scripts/kernel-stats/radv.sh` runs this tool so, the
//! f16 kernels with Mesa 25's cooperative matrices). The counts are AMD's, not NVIDIA's; what
//! they compare is one version of a kernel against another.
//!
//! The kernels are compiled as the library compiles them on Vulkan: naga's SPIR-V with the
//! pipeline constants the conv kernels use for 3x3 convolutions (taps outer), no index or loop
//! checks (`create_shader_module_trusted`), no workgroup-memory zeroing. The device is one of
//! this tool's own (plain Vulkan through `ash`), so that it can enable the extension, which wgpu
//! does not. Where no device offers it (lavapipe), the pipelines are built all the same, without
//! statistics: a check that every kernel compiles for the driver.

use ash::vk;
use resnet_wgpu::gpu::{
    COMMON_SHADER, LANES_FILES, LANES_MEMORY, LANES_SUBGROUP, REDUCING_ENGINE, REDUCING_FILES,
};
use resnet_wgpu::ops::CONV_SHADER_VARIANTS;
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::CString;

/// The WGSL source of a file under `shaders/`.
fn shader(file: &str) -> &'static str {
    match file {
        "conv.wgsl" => include_str!("../shaders/conv.wgsl"),
        "conv_fma.wgsl" => include_str!("../shaders/conv_fma.wgsl"),
        "conv_mma.wgsl" => include_str!("../shaders/conv_mma.wgsl"),
        "batchnorm.wgsl" => include_str!("../shaders/batchnorm.wgsl"),
        "elementwise.wgsl" => include_str!("../shaders/elementwise.wgsl"),
        "pool.wgsl" => include_str!("../shaders/pool.wgsl"),
        "matmul.wgsl" => include_str!("../shaders/matmul.wgsl"),
        "optim.wgsl" => include_str!("../shaders/optim.wgsl"),
        "loss.wgsl" => include_str!("../shaders/loss.wgsl"),
        "winograd.wgsl" => include_str!("../shaders/winograd.wgsl"),
        "conv_narrow.wgsl" => include_str!("../shaders/conv_narrow.wgsl"),
        "reduce.wgsl" => include_str!("../shaders/reduce.wgsl"),
        "butterfly.wgsl" => include_str!("../shaders/butterfly.wgsl"),
        other => panic!("no shader {other}"),
    }
}

/// One kernel to compile: a label, its WGSL source, the entry point and pipeline constants.
struct Job {
    label: String,
    source: String,
    entry: &'static str,
    constants: Vec<(&'static str, f64)>,
    /// Needs `shader-f16` and cooperative matrices (the f16 conv engine).
    mma: bool,
}

#[derive(Serialize)]
struct Row {
    kernel: String,
    entry: String,
    /// Per executable (usually one for a compute pipeline): its name and statistics.
    executables: Vec<Executable>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Executable {
    name: String,
    stats: Vec<(String, String)>,
}

/// `const TM: u32 = 8u;` ... of a conv variant, as `TM 8 TN 4 BK 16 TX 16 STAGES 2`.
fn tile_label(variant: &str) -> String {
    let mut parts = Vec::new();
    for line in variant.lines() {
        let Some(rest) = line.strip_prefix("const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(':') else {
            continue;
        };
        if name == "SHARED_A" {
            continue; // false in every variant compiled here
        }
        let value = value.rsplit('=').next().unwrap_or("").trim();
        let value = value.trim_end_matches(';').trim_end_matches('u');
        parts.push(format!("{name} {value}"));
    }
    parts.join(" ")
}

fn jobs() -> Vec<Job> {
    let mut jobs = Vec::new();
    // The conv passes of a 3x3 stride-1 convolution, taps outer (the default order): every f32
    // tile with one and two staged copies and with one shallow copy, and the f16 tensor-core
    // tiles for subgroups of 32;
    // and the input gradient adding to a sum (ACCUMULATE), and with a strided convolution's
    // phases merged into one dispatch.
    let conv = [
        ("KH", 3.0),
        ("KW", 3.0),
        ("NR", 3.0),
        ("NS", 3.0),
        ("TAPS_OUTER", 1.0),
    ];
    let mut seen = std::collections::HashSet::new();
    for (i, (variant, engine)) in CONV_SHADER_VARIANTS.iter().enumerate() {
        if !seen.insert((variant, engine)) {
            continue; // a tile the CPU adapters' sets share with the others
        }
        let mma = engine.contains("mma");
        if mma && !variant.contains("const SG: u32 = 32u;") {
            continue; // lavapipe's 8x8 fragments
        }
        if variant.contains("const SHARED_A: bool = true;") {
            continue; // CPU adapters' tiles (ops::conv_shares_a)
        }
        // The f32 engine takes a lanes file, whose exchanges its GPU tiles never call.
        let lanes = if mma { "" } else { LANES_MEMORY };
        let source = format!(
            "{variant}{COMMON_SHADER}{lanes}{}{}",
            shader(engine),
            shader("conv.wgsl")
        );
        for entry in [
            "conv_forward",
            "conv_backward_input",
            "conv_backward_weight",
        ] {
            jobs.push(Job {
                label: format!("conv #{i} {} ({engine})", tile_label(variant)),
                source: source.clone(),
                entry,
                constants: conv.to_vec(),
                mma,
            });
        }
        // Inference's conv with its batch norm, the residual and the ReLU (a block's last conv).
        let mut fused = conv.to_vec();
        fused.extend([("RESIDUAL", 1.0), ("RELU", 1.0)]);
        jobs.push(Job {
            label: format!(
                "conv #{i} {} ({engine}) bn residual relu",
                tile_label(variant)
            ),
            source: source.clone(),
            entry: "conv_forward_bn",
            constants: fused,
            mma,
        });
        // The input gradient adding to the gradient so far (a residual block's first conv).
        let mut accumulating = conv.to_vec();
        accumulating.push(("ACCUMULATE", 1.0));
        jobs.push(Job {
            label: format!("conv #{i} {} ({engine}) accumulating", tile_label(variant)),
            source: source.clone(),
            entry: "conv_backward_input",
            constants: accumulating,
            mma,
        });
        // The input gradient of a strided convolution with its phases in one dispatch.
        let mut merged = conv.to_vec();
        merged.extend([("NR", 1.0), ("NS", 1.0), ("MERGED", 1.0)]);
        merged.retain(|&(name, value)| !matches!(name, "NR" | "NS") || value == 1.0);
        jobs.push(Job {
            label: format!("conv #{i} {} ({engine}) merged", tile_label(variant)),
            source,
            entry: "conv_backward_input",
            constants: merged,
            mma,
        });
    }
    // The files whose kernels reduce through butterfly.wgsl, compiled with workgroup memory
    // alone, as below; `REDUCING_LANES` compiles them with subgroup lanes too.
    let reducing = |file: &str| REDUCING_FILES.contains(&file);
    let simple = |file: &str, entry: &'static str, constants: Vec<(&'static str, f64)>| Job {
        label: file.to_string(),
        source: match (reducing(file), LANES_FILES.contains(&file)) {
            (true, _) => format!(
                "{COMMON_SHADER}{LANES_MEMORY}{}{}",
                shader(REDUCING_ENGINE),
                shader(file)
            ),
            (false, true) => format!("{COMMON_SHADER}{LANES_MEMORY}{}", shader(file)),
            (false, false) => format!("{COMMON_SHADER}{}", shader(file)),
        },
        entry,
        constants,
        mma: false,
    };
    for entry in [
        "stats_partial",
        "stats_partial4",
        "stats_finalize",
        "backward_finalize",
        "channel_record",
        "normalize",
        "backward_partial",
        "backward_partial4",
        "backward_input",
        "backward_input_inplace",
    ] {
        jobs.push(simple("batchnorm.wgsl", entry, vec![]));
    }
    // As a residual block's kernels run them: its join's normalize (residual and ReLU), the
    // partial sums there (masked by the ReLU, written back), a ReLU's input gradient.
    let relu = ("RELU", 1.0);
    for (entry, label, constants) in [
        ("normalize", "residual relu", vec![("RESIDUAL", 1.0), relu]),
        // Planes of 7 x 7: units of 4 values crossing into a second channel.
        (
            "normalize",
            "residual relu 7x7",
            vec![("RESIDUAL", 1.0), relu, ("QUAD_CHANNELS", 2.0)],
        ),
        (
            "backward_partial",
            "relu mask out",
            vec![relu, ("MASK_OUT", 1.0)],
        ),
        (
            "backward_partial4",
            "relu mask out",
            vec![relu, ("MASK_OUT", 1.0)],
        ),
        ("backward_input", "relu", vec![relu]),
        (
            "backward_input",
            "relu 7x7",
            vec![relu, ("QUAD_CHANNELS", 2.0)],
        ),
        // The stem's batch norm, ReLU and 3x3/2 max pool: the backward's input gradient.
        (
            "pooled_backward_input",
            "stem",
            vec![("PK", 3.0), ("PS", 2.0), ("PP", 1.0)],
        ),
    ] {
        jobs.push(Job {
            label: format!("batchnorm.wgsl {label}"),
            ..simple("batchnorm.wgsl", entry, constants)
        });
    }
    for entry in [
        "add",
        "add4",
        "axpy",
        "axpy4",
        "relu_backward",
        "relu_backward_inplace",
        "relu_backward_inplace4",
    ] {
        jobs.push(simple("elementwise.wgsl", entry, vec![]));
    }
    let pool = vec![("WK", 3.0), ("WS", 2.0), ("WP", 1.0)];
    for entry in ["max_forward", "max_backward"] {
        jobs.push(simple("pool.wgsl", entry, pool.clone()));
    }
    // The stem's pool: of the batch norm's output, with the ReLU after it.
    let mut stem = pool.clone();
    stem.extend([("BN", 1.0), ("RELU", 1.0)]);
    jobs.push(Job {
        label: "pool.wgsl stem".to_string(),
        ..simple("pool.wgsl", "max_forward", stem)
    });
    for entry in [
        "wino_weights",
        "wino_input",
        "wino_output",
        "wino_output_bn",
        "wino_gy",
        "wino_weights_grad",
        "wino4_weights",
        "wino4_input",
        "wino4_output",
        "wino4_output_bn",
        "wino4_gy",
        "wino4_weights_grad",
    ] {
        jobs.push(simple("winograd.wgsl", entry, vec![]));
    }
    // The input gradient's output transforms, adding to the gradient so far, and inference's
    // batch-norm output transforms as a residual block's last conv runs them.
    for (entry, label, constants) in [
        ("wino_output", "accumulating", vec![("ACCUMULATE", 1.0)]),
        ("wino4_output", "accumulating", vec![("ACCUMULATE", 1.0)]),
        (
            "wino_output_bn",
            "residual relu",
            vec![("RESIDUAL", 1.0), ("RELU", 1.0)],
        ),
        (
            "wino4_output_bn",
            "residual relu",
            vec![("RESIDUAL", 1.0), ("RELU", 1.0)],
        ),
    ] {
        jobs.push(Job {
            label: format!("winograd.wgsl {label}"),
            ..simple("winograd.wgsl", entry, constants)
        });
    }
    // The narrow conv kernels as an 8-channel 3x3 layer runs them (two vec4 groups).
    let narrow = vec![("VG", 2.0), ("WG", 64.0), ("KH", 3.0), ("KW", 3.0)];
    for entry in [
        "narrow_forward",
        "narrow_backward_input",
        "narrow_backward_weight",
        "narrow_gather4",
    ] {
        jobs.push(simple("conv_narrow.wgsl", entry, narrow.clone()));
    }
    for entry in ["matmul", "matvec"] {
        jobs.push(simple("matmul.wgsl", entry, vec![]));
    }
    for entry in [
        "sgd_momentum",
        "sgd_momentum4",
        "sgd_momentum_group",
        "adam4",
        "adam_group",
    ] {
        jobs.push(simple("optim.wgsl", entry, vec![]));
    }
    jobs.push(simple("optim.wgsl", "clip_sumsq", vec![]));
    jobs.push(simple("loss.wgsl", "softmax_xent", vec![]));
    jobs.push(simple("pool.wgsl", "gap_forward", vec![]));
    for entry in ["sum_channels", "abs_max"] {
        jobs.push(simple("reduce.wgsl", entry, vec![]));
    }
    // Every reducing kernel again with its levels below 32 lanes through subgroup shuffles
    // (lanes_subgroup.wgsl), as on an adapter whose smallest subgroups have 32 lanes; and the
    // narrow conv kernels with their shared reads through those lanes.
    let lanes: Vec<Job> = jobs
        .iter()
        .filter(|j| {
            let file = j.label.split(' ').next().unwrap_or("");
            (reducing(file) && REDUCING_ENTRIES.contains(&j.entry))
                || (file == "conv_narrow.wgsl" && j.entry != "narrow_gather4")
        })
        .map(|j| {
            let mut constants = j.constants.clone();
            constants.push(("SUBGROUP_LANES", REDUCING_LANES));
            Job {
                label: format!("{} subgroup lanes", j.label),
                source: j.source.replacen(LANES_MEMORY, LANES_SUBGROUP, 1),
                entry: j.entry,
                constants,
                mma: false,
            }
        })
        .collect();
    jobs.extend(lanes);
    jobs
}

/// The entry points of the reducing files that reduce (the others compile alike either way).
const REDUCING_ENTRIES: [&str; 12] = [
    "stats_partial",
    "stats_finalize",
    "backward_finalize",
    "stats_partial4",
    "backward_partial",
    "backward_partial4",
    "softmax_xent",
    "matvec",
    "clip_sumsq",
    "gap_forward",
    "sum_channels",
    "abs_max",
];

/// The subgroup lanes the reducing kernels' second compilation exchanges values between:
/// NVIDIA's subgroup size, and RDNA's smallest.
const REDUCING_LANES: f64 = 32.0;

/// A compiled kernel: SPIR-V words and the group-0 bindings its entry point uses, (binding,
/// whether it is the uniform).
type Compiled = (Vec<u32>, Vec<(u32, bool)>);

/// SPIR-V of `job` as wgpu's Vulkan back end makes it for the library's trusted kernels.
fn compile(job: &Job, lang_version: (u8, u8)) -> Result<Compiled, String> {
    let module = naga::front::wgsl::parse_str(&job.source).map_err(|e| e.emit_to_string(""))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| format!("{e:?}"))?;
    let constants: naga::back::PipelineConstants = job
        .constants
        .iter()
        .filter(|(name, _)| {
            module
                .overrides
                .iter()
                .any(|(_, o)| o.name.as_deref() == Some(name))
        })
        .map(|(n, v)| (n.to_string(), *v))
        .collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, job.entry)),
        &constants,
    )
    .map_err(|e| format!("{e:?}"))?;
    let options = naga::back::spv::Options {
        lang_version,
        bounds_check_policies: naga::proc::BoundsCheckPolicies::default(),
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: job.entry.to_string(),
    };
    let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| format!("{e:?}"))?;
    // The entry point's buffers: (binding, uniform?) of group 0.
    let ep = module
        .entry_points
        .iter()
        .position(|e| e.name == job.entry)
        .ok_or("no such entry point")?;
    let usage = info.get_entry_point(ep);
    let mut bindings = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        if usage[handle].is_empty() || rb.group != 0 {
            continue;
        }
        let uniform = matches!(var.space, naga::AddressSpace::Uniform);
        bindings.push((rb.binding, uniform));
    }
    Ok((words, bindings))
}

struct Device {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    /// None where the device does not offer the extension: the pipelines are still built (a
    /// check that every kernel compiles), without statistics.
    exec: Option<ash::khr::pipeline_executable_properties::Device>,
    name: String,
    lang_version: (u8, u8),
    mma: bool,
}

fn has_extension(instance: &ash::Instance, pd: vk::PhysicalDevice, name: &std::ffi::CStr) -> bool {
    let exts = unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
    exts.iter()
        .any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == name))
}

/// A Vulkan device, one offering `VK_KHR_pipeline_executable_properties` first (then a discrete
/// GPU first), with that feature, and where offered shader f16 and cooperative matrices.
fn open_device() -> Result<Device, String> {
    let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("no Vulkan loader: {e}"))?;
    let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
    let create = vk::InstanceCreateInfo::default().application_info(&app);
    let instance = unsafe { entry.create_instance(&create, None) }
        .map_err(|e| format!("cannot create a Vulkan instance: {e}"))?;
    let exec_name = ash::khr::pipeline_executable_properties::NAME;
    let mut candidates: Vec<(vk::PhysicalDevice, vk::PhysicalDeviceProperties)> =
        unsafe { instance.enumerate_physical_devices() }
            .map_err(|e| format!("cannot list Vulkan devices: {e}"))?
            .into_iter()
            .map(|pd| (pd, unsafe { instance.get_physical_device_properties(pd) }))
            .collect();
    candidates.sort_by_key(|(pd, p)| {
        (
            !has_extension(&instance, *pd, exec_name),
            p.device_type != vk::PhysicalDeviceType::DISCRETE_GPU,
        )
    });
    let Some(&(pd, props)) = candidates.first() else {
        return Err("no Vulkan device".into());
    };
    let stats = has_extension(&instance, pd, exec_name);
    let name = c_text(props.device_name_as_c_str());
    let queue_family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
        .iter()
        .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .ok_or("no compute queue")? as u32;
    let coop_name = ash::khr::cooperative_matrix::NAME;
    let offers_mma = has_extension(&instance, pd, coop_name);
    // With the f16 engine's features where offered; without them if the driver refuses those.
    let mut opened = None;
    for mma in [offers_mma, false] {
        match unsafe { create_device(&instance, pd, queue_family, stats, mma) } {
            Ok(device) => {
                opened = Some((device, mma));
                break;
            }
            Err(e) if !mma => return Err(format!("cannot open {name}: {e}")),
            Err(e) => eprintln!("kernel_stats: {name} without the f16 engine's features ({e})"),
        }
    }
    let (device, mma) = opened.expect("the loop returns or opens");
    let exec =
        stats.then(|| ash::khr::pipeline_executable_properties::Device::new(&instance, &device));
    let v = props.api_version;
    let lang_version = if v >= vk::API_VERSION_1_3 {
        (1, 6)
    } else if v >= vk::API_VERSION_1_2 {
        (1, 5)
    } else if v >= vk::API_VERSION_1_1 {
        (1, 3)
    } else {
        (1, 0)
    };
    Ok(Device {
        _entry: entry,
        instance,
        device,
        exec,
        name,
        lang_version,
        mma,
    })
}

/// A device on `pd` with one compute queue, the statistics feature when `stats`, and shader f16,
/// the Vulkan memory model, 16-bit storage and cooperative matrices when `mma`.
unsafe fn create_device(
    instance: &ash::Instance,
    pd: vk::PhysicalDevice,
    queue_family: u32,
    stats: bool,
    mma: bool,
) -> Result<ash::Device, vk::Result> {
    let mut exts = Vec::new();
    if stats {
        exts.push(ash::khr::pipeline_executable_properties::NAME.as_ptr());
    }
    if mma {
        exts.push(ash::khr::cooperative_matrix::NAME.as_ptr());
    }
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(queue_family)
        .queue_priorities(&priorities)];
    let mut exec_features = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default()
        .pipeline_executable_info(true);
    let mut v12 = vk::PhysicalDeviceVulkan12Features::default()
        .shader_float16(true)
        .vulkan_memory_model(true)
        .vulkan_memory_model_device_scope(true);
    let mut v11 = vk::PhysicalDeviceVulkan11Features::default()
        .storage_buffer16_bit_access(true)
        .uniform_and_storage_buffer16_bit_access(true);
    let mut coop =
        vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
    let mut create = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queues)
        .enabled_extension_names(&exts);
    if stats {
        create = create.push_next(&mut exec_features);
    }
    if mma {
        create = create
            .push_next(&mut v12)
            .push_next(&mut v11)
            .push_next(&mut coop);
    }
    unsafe { instance.create_device(pd, &create, None) }
}

/// Build `job`'s pipeline with statistics captured and read them; with `isa`, also what the
/// driver shows of the compiled code, written to a file under that folder.
fn stats(dev: &Device, job: &Job, isa: Option<&str>) -> Result<Vec<Executable>, String> {
    let (words, bindings) = compile(job, dev.lang_version)?;
    let d = &dev.device;
    unsafe {
        let module = d
            .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
            .map_err(|e| format!("shader module: {e}"))?;
        let layout_bindings: Vec<vk::DescriptorSetLayoutBinding> = bindings
            .iter()
            .map(|&(binding, uniform)| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(binding)
                    .descriptor_type(if uniform {
                        vk::DescriptorType::UNIFORM_BUFFER
                    } else {
                        vk::DescriptorType::STORAGE_BUFFER
                    })
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let set_layout = d
            .create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&layout_bindings),
                None,
            )
            .map_err(|e| format!("descriptor set layout: {e}"))?;
        let set_layouts = [set_layout];
        let layout = d
            .create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts),
                None,
            )
            .map_err(|e| format!("pipeline layout: {e}"))?;
        let name = CString::new(job.entry).expect("entry names have no NUL");
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(&name);
        let mut info = vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(layout);
        if dev.exec.is_some() {
            let mut flags = vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR;
            if isa.is_some() {
                flags |= vk::PipelineCreateFlags::CAPTURE_INTERNAL_REPRESENTATIONS_KHR;
            }
            info = info.flags(flags);
        }
        let result = d.create_compute_pipelines(vk::PipelineCache::null(), &[info], None);
        let out = match result {
            Ok(pipelines) => {
                let p = pipelines[0];
                let read = read_stats(dev, p);
                let written = match isa {
                    Some(dir) => write_isa(dev, p, dir, job),
                    None => Ok(()),
                };
                d.destroy_pipeline(p, None);
                written.and(read)
            }
            Err((_, e)) => Err(format!("pipeline: {e}")),
        };
        d.destroy_pipeline_layout(layout, None);
        d.destroy_descriptor_set_layout(set_layout, None);
        d.destroy_shader_module(module, None);
        out
    }
}

/// A name the driver gave, or `?` where it is not a C string.
fn c_text(s: Result<&std::ffi::CStr, std::ffi::FromBytesUntilNulError>) -> String {
    s.map_or(String::from("?"), |c| c.to_string_lossy().into_owned())
}

/// Each compiled executable of `pipeline` (one for a compute pipeline, usually): the info that
/// names it in the extension's queries, and its name.
unsafe fn executables(
    exec: &ash::khr::pipeline_executable_properties::Device,
    pipeline: vk::Pipeline,
) -> Result<Vec<(vk::PipelineExecutableInfoKHR<'static>, String)>, String> {
    let info = vk::PipelineInfoKHR::default().pipeline(pipeline);
    let props = unsafe { exec.get_pipeline_executable_properties(&info) }
        .map_err(|e| format!("executable properties: {e}"))?;
    Ok((0..)
        .zip(&props)
        .map(|(i, prop)| {
            let exe = vk::PipelineExecutableInfoKHR::default()
                .pipeline(pipeline)
                .executable_index(i);
            (exe, c_text(prop.name_as_c_str()))
        })
        .collect())
}

/// The driver's internal representations of `pipeline` (text ones), one after another under a
/// `=== executable: representation ===` line, to `DIR/<kernel>.<entry>.txt`.
unsafe fn write_isa(
    dev: &Device,
    pipeline: vk::Pipeline,
    dir: &str,
    job: &Job,
) -> Result<(), String> {
    let Some(exec) = &dev.exec else {
        return Ok(());
    };
    let mut text = String::new();
    for (exe, exe_name) in unsafe { executables(exec, pipeline) }? {
        // Two calls: the representations' names and sizes, then their text into buffers.
        let mut reps = unsafe { exec.get_pipeline_executable_internal_representations(&exe) }
            .map_err(|e| format!("internal representations: {e}"))?;
        let mut buffers: Vec<Vec<u8>> = reps.iter().map(|r| vec![0u8; r.data_size]).collect();
        for (r, b) in reps.iter_mut().zip(&mut buffers) {
            r.p_data = b.as_mut_ptr().cast();
        }
        let mut count = reps.len() as u32;
        let get = exec
            .fp()
            .get_pipeline_executable_internal_representations_khr;
        unsafe { get(exec.device(), &exe, &mut count, reps.as_mut_ptr()) }
            .result()
            .map_err(|e| format!("internal representations: {e}"))?;
        for (r, b) in reps.iter().zip(&buffers) {
            if r.is_text == vk::FALSE {
                continue;
            }
            let name = c_text(r.name_as_c_str());
            let body = String::from_utf8_lossy(b);
            text.push_str(&format!("=== {exe_name}: {name} ===\n"));
            text.push_str(body.trim_end_matches('\0'));
            text.push('\n');
        }
    }
    let file: String = format!("{} {}", job.label, job.entry)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = format!("{dir}/{file}.txt");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

unsafe fn read_stats(dev: &Device, pipeline: vk::Pipeline) -> Result<Vec<Executable>, String> {
    let Some(exec) = &dev.exec else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (exe, name) in unsafe { executables(exec, pipeline) }? {
        let stats = unsafe { exec.get_pipeline_executable_statistics(&exe) }
            .map_err(|e| format!("executable statistics: {e}"))?;
        let stats = stats
            .iter()
            .map(|s| {
                let value = unsafe {
                    match s.format {
                        vk::PipelineExecutableStatisticFormatKHR::BOOL32 => {
                            (s.value.b32 != 0).to_string()
                        }
                        vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => {
                            format!("{:.3}", s.value.f64)
                        }
                        _ => "?".into(),
                    }
                };
                (c_text(s.name_as_c_str()), value)
            })
            .collect();
        out.push(Executable { name, stats });
    }
    Ok(out)
}

fn usage() -> ! {
    eprintln!("usage: kernel_stats [--json PATH] [--only TEXT] [--isa DIR]");
    std::process::exit(2);
}

fn main() {
    let mut json = None;
    let mut only = None;
    let mut isa = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--json" => &mut json,
            "--only" => &mut only,
            "--isa" => &mut isa,
            _ => usage(),
        };
        *slot = Some(args.next().unwrap_or_else(|| usage()));
    }
    if let Some(dir) = &isa
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("kernel_stats: cannot create {dir}: {e}");
        std::process::exit(1);
    }
    let dev = match open_device() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kernel_stats: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "device: {} (SPIR-V {}.{}; f16 tensor-core kernels {})",
        dev.name,
        dev.lang_version.0,
        dev.lang_version.1,
        if dev.mma {
            "included"
        } else {
            "skipped: no VK_KHR_cooperative_matrix"
        }
    );
    if dev.exec.is_none() {
        println!(
            "no VK_KHR_pipeline_executable_properties: the pipelines are built, without statistics"
        );
    }
    let mut rows = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for job in jobs() {
        if job.mma && !dev.mma {
            continue;
        }
        if let Some(text) = &only
            && !job.label.contains(text.as_str())
            && !job.entry.contains(text.as_str())
        {
            continue;
        }
        let (executables, error) = match stats(&dev, &job, isa.as_deref()) {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let summary = match &error {
            Some(e) => format!("error: {e}"),
            None if dev.exec.is_none() => "built".into(),
            None => executables
                .iter()
                .map(|x| {
                    let s: Vec<String> = x.stats.iter().map(|(n, v)| format!("{n} {v}")).collect();
                    s.join(", ")
                })
                .collect::<Vec<_>>()
                .join(" | "),
        };
        *counts
            .entry(if error.is_some() { "failed" } else { "ok" })
            .or_default() += 1;
        println!("{:<58} {:<24} {summary}", job.label, job.entry);
        rows.push(Row {
            kernel: job.label,
            entry: job.entry.to_string(),
            executables,
            error,
        });
    }
    println!(
        "{} pipelines, {} failed",
        counts.get("ok").unwrap_or(&0) + counts.get("failed").unwrap_or(&0),
        counts.get("failed").unwrap_or(&0)
    );
    unsafe {
        dev.device.destroy_device(None);
        dev.instance.destroy_instance(None);
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialize");
        let tmp = format!("{path}.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            eprintln!("kernel_stats: cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("statistics written to {path}");
    }
}
