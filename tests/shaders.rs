//! Every shader parses and validates with naga (no GPU needed) and translates to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12).

use std::path::Path;

#[test]
fn every_shader_validates_and_translates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        count += 1;
        let name = path.display().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: parse error\n{}", e.emit_to_string(&src)));
        let header_ok = src.trim_start().starts_with("//");
        assert!(
            header_ok,
            "{name}: a header comment must describe math, dispatch and bindings"
        );
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation error\n{}", e.emit_to_string(&src)));

        naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));

        for ep in &module.entry_points {
            let pipeline = naga::back::msl::PipelineOptions {
                entry_point: Some((ep.stage, ep.name.clone())),
                ..Default::default()
            };
            naga::back::msl::write_string(
                &module,
                &info,
                &naga::back::msl::Options::default(),
                &pipeline,
            )
            .unwrap_or_else(|e| panic!("{name}::{}: MSL: {e}", ep.name));
        }

        let mut hlsl = String::new();
        let opts = naga::back::hlsl::Options::default();
        let pipeline_opts = Default::default();
        let mut w = naga::back::hlsl::Writer::new(&mut hlsl, &opts, &pipeline_opts);
        w.write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    }
    assert!(
        count >= 2,
        "expected the shaders directory to hold the kernels, found {count}"
    );
}
