//! Every shader parses and validates with naga (no GPU needed) and translates to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12), with common.wgsl's helpers as the host puts them into every
//! module. Files compiled in variants (declarations the host prepends, such as conv.wgsl's tile
//! sizes, and an engine file between them) are checked in each, those whose engine takes a
//! lanes file (the reductions, the f32 conv engine) with both lanes files; overridable
//! constants take their defaults, and those without one (which the host must set) the value 1.
//! The f16 tensor-core engine (cooperative matrices, which wgpu offers on Vulkan and Metal
//! only) is not translated to HLSL.

use resnet_wgpu::gpu::{
    LANES_ENGINES, LANES_FILES, LANES_MEMORY, LANES_SUBGROUP, REDUCING_ENGINE, REDUCING_FILES,
};
use resnet_wgpu::ops::GEMM_WIDE_READS;
use std::path::Path;

/// The (variant, engine file) pairs a file is compiled in (("", "") alone for plain files; none
/// for engine files, lanes files and common.wgsl, which are checked inside the files that
/// include them).
fn variants(file: &str) -> Vec<(&'static str, &'static str)> {
    match file {
        "conv.wgsl" => resnet_wgpu::ops::CONV_SHADER_VARIANTS.to_vec(),
        f if REDUCING_FILES.contains(&f) => vec![("", REDUCING_ENGINE)],
        "winograd_quads.wgsl" => vec![("", "winograd.wgsl")],
        "gemm_lanes.wgsl" => GEMM_WIDE_READS.iter().map(|&reads| (reads, "")).collect(),
        "conv_fma.wgsl"
        | "gemm_wide.wgsl"
        | "gemm_wide_f32.wgsl"
        | "conv_mma.wgsl"
        | "common.wgsl"
        | "butterfly.wgsl"
        | "lanes_subgroup.wgsl"
        | "lanes_memory.wgsl" => vec![],
        _ => vec![("", "")],
    }
}

/// The lanes files a module of `file` with `engine` is compiled with, each before the engine:
/// both for the engines that take one (the reductions', the f32 conv engine) and the files
/// that do (the GEMM for CPU adapters), none for the others.
fn lanes_for(file: &str, engine: &str) -> Vec<&'static str> {
    if LANES_ENGINES.contains(&engine) || LANES_FILES.contains(&file) {
        vec![LANES_MEMORY, LANES_SUBGROUP]
    } else {
        vec![""]
    }
}

#[test]
fn every_shader_validates_and_translates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    let mut count_engines = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        count += 1;
        let file = std::fs::read_to_string(&path).unwrap();
        let header_ok = file.trim_start().starts_with("//");
        assert!(
            header_ok,
            "{}: a header comment must describe math, dispatch and bindings",
            path.display()
        );
        let file_name = path.file_name().unwrap().to_str().unwrap();
        for (variant, engine) in variants(file_name) {
            let engine_text = match engine {
                "" => String::new(),
                e => std::fs::read_to_string(dir.join(e)).unwrap(),
            };
            let common = resnet_wgpu::gpu::COMMON_SHADER;
            for lanes in lanes_for(file_name, engine) {
                let with = if lanes == LANES_SUBGROUP {
                    " subgroup lanes"
                } else {
                    ""
                };
                let name = format!("{} {engine}{with} {variant:?}", path.display());
                check(
                    &name,
                    &format!("{variant}{common}{lanes}{engine_text}{file}"),
                );
                count_engines += usize::from(!engine.is_empty());
            }
        }
    }
    assert!(
        count >= 2,
        "expected the shaders directory to hold the kernels, found {count}"
    );
    assert!(
        count_engines >= 6,
        "expected conv.wgsl to be checked with each engine variant, found {count_engines}"
    );
}

fn check(name: &str, src: &str) {
    {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: parse error\n{}", e.emit_to_string(src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error\n{}", e.emit_to_string(src)));
        // Constants the host must set (no default in the shader) get 1 here.
        let required: naga::back::PipelineConstants = module
            .overrides
            .iter()
            .filter(|(_, o)| o.init.is_none())
            .filter_map(|(_, o)| o.name.clone().map(|n| (n, 1.0)))
            .collect();
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &required)
                .unwrap_or_else(|e| panic!("{name}: overrides: {e}"));
        let (module, info) = (module.as_ref(), info.as_ref());

        naga::back::spv::write_vec(module, info, &naga::back::spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));

        for ep in &module.entry_points {
            let pipeline = naga::back::msl::PipelineOptions {
                entry_point: Some((ep.stage, ep.name.clone())),
                ..Default::default()
            };
            let mut msl = naga::back::msl::Options::default();
            if src.contains("enable wgpu_cooperative_matrix") {
                msl.lang_version = (2, 3); // simdgroup matrices
            }
            naga::back::msl::write_string(module, info, &msl, &pipeline)
                .unwrap_or_else(|e| panic!("{name}::{}: MSL: {e}", ep.name));
        }

        if src.contains("enable wgpu_cooperative_matrix") {
            return; // no HLSL for cooperative matrices (wgpu offers them on Vulkan and Metal)
        }
        let mut hlsl = String::new();
        let opts = naga::back::hlsl::Options::default();
        let pipeline_opts = Default::default();
        let mut w = naga::back::hlsl::Writer::new(&mut hlsl, &opts, &pipeline_opts);
        w.write(module, info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    }
}
