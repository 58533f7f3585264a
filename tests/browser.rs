//! The browser build, end to end: the crate compiled to wasm32 and driven in headless Chromium
//! through WebGPU must give the native logits for the same weights and image, and train.
//!
//! Steps: build the wasm (`cargo build --target wasm32-unknown-unknown` + `wasm-bindgen` of the
//! crate's exact version) into `web/pkg`, write the Fashion-MNIST subset into `web/data`, make a
//! fixed model (safetensors) and a fixed non-square PNG, compute the native logits on this
//! machine's adapter, serve `web/` on 127.0.0.1, and run `web/test/drive.mjs` (playwright-core with
//! the system Chromium). It asserts that the page's logits equal the native ones to 1e-3, that its
//! top-5 is the native top-5, that 30 training steps in the page lower the loss, and that the page
//! logged no console error and threw no uncaught error. The screenshot lands in
//! `target/browser-test/page.png`; sizes and timings are printed (run with `--nocapture`).
//!
//! Requirements (the test fails, naming what to install, when one is missing): Chromium
//! (`apt-get install chromium`, or `$CHROMIUM`), node and `npm ci --prefix web/test`, the wasm32
//! target (`rustup target add wasm32-unknown-unknown`), `wasm-bindgen-cli` at the version in
//! Cargo.lock, and Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or `$FASHION_MNIST_DIR`).

mod common;

use resnet_wgpu::Rng;
use resnet_wgpu::classify::Classifier;
use resnet_wgpu::data::{self, IMAGENET_MEAN, IMAGENET_STD};
use resnet_wgpu::io::{self, HostData};
use resnet_wgpu::nn::{ParamKind, ResNet, ResNetConfig, Stem};
use resnet_wgpu::train::{ScheduleKind, TrainConfig, Trainer};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TRAIN_STEPS: usize = 30;
const INPUT_SIZE: usize = 64;
const CLASSES: usize = 100;
const IMAGE_W: u32 = 150;
const IMAGE_H: u32 = 97;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory this test binary was built in (`.../target/<profile>/deps/browser-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root().join("target"))
}

fn run(cmd: &mut Command, what: &str, help: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}. {help}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}\n{help}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `wasm-bindgen` version pinned in Cargo.lock.
fn locked_wasm_bindgen() -> String {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wasm-bindgen\"" {
            let v = lines.next().expect("version line");
            return v
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_string();
        }
    }
    panic!("wasm-bindgen is not in Cargo.lock");
}

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Chromium is required for the browser test: `apt-get install chromium` (or set $CHROMIUM)"
    );
}

fn check_tools() -> PathBuf {
    let chromium = chromium();
    run(
        Command::new("node").arg("--version"),
        "node",
        "Install Node.js (Debian: `apt-get install nodejs npm`).",
    );
    if !root()
        .join("web/test/node_modules/playwright-core")
        .exists()
    {
        panic!(
            "playwright-core is missing: run `npm ci --prefix web/test` (it drives the system Chromium)"
        );
    }
    let want = locked_wasm_bindgen();
    let install =
        format!("Install it with `cargo install wasm-bindgen-cli --version {want} --locked`.");
    let got = run(
        Command::new("wasm-bindgen").arg("--version"),
        "wasm-bindgen",
        &install,
    );
    if got.split_whitespace().nth(1) != Some(want.as_str()) {
        panic!(
            "wasm-bindgen-cli is `{}` but the crate uses wasm-bindgen {want}. {install}",
            got.trim()
        );
    }
    chromium
}

/// Build the wasm package into web/pkg; returns the size of the .wasm in bytes.
fn build_wasm() -> u64 {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = target_dir();
    run(
        Command::new(&cargo)
            .current_dir(root())
            .args([
                "build",
                "--lib",
                "--release",
                "--target",
                "wasm32-unknown-unknown",
            ])
            .arg("--target-dir")
            .arg(&target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
        "building the wasm32 library",
        "Add the target with `rustup target add wasm32-unknown-unknown`.",
    );
    let wasm = target.join("wasm32-unknown-unknown/release/resnet_wgpu.wasm");
    let pkg = root().join("web/pkg");
    run(
        Command::new("wasm-bindgen")
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&pkg)
            .arg(&wasm),
        "wasm-bindgen",
        "",
    );
    std::fs::metadata(pkg.join("resnet_wgpu_bg.wasm"))
        .expect("wasm-bindgen output")
        .len()
}

fn make_subset() {
    run(
        Command::new("node")
            .current_dir(root())
            .arg("web/tools/fashion-subset.mjs"),
        "writing the Fashion-MNIST subset",
        "Install Fashion-MNIST: `apt-get install dataset-fashion-mnist` (or set $FASHION_MNIST_DIR).",
    );
}

/// A fixed ResNet-18-shaped network (narrow, 100 classes) with non-trivial batch-norm statistics,
/// as safetensors bytes with the preprocessing in its metadata.
fn fixture_model() -> Vec<u8> {
    let config = ResNetConfig::resnet18(CLASSES)
        .with_widths(vec![16, 32, 64, 128])
        .with_stem(Stem::ImageNet);
    let mut rng = Rng::new(20240607);
    let mut dict = config.init_params(&mut rng).unwrap();
    for spec in config.param_specs() {
        let t = dict.get_mut(&spec.name).unwrap();
        if let HostData::F32(v) = &mut t.data {
            for x in v.iter_mut() {
                match spec.kind {
                    ParamKind::BnWeight => *x = rng.uniform_range(0.5, 1.5),
                    ParamKind::BnBias => *x = rng.uniform_range(-0.2, 0.2),
                    ParamKind::BnRunningMean => *x = rng.uniform_range(-0.2, 0.2),
                    ParamKind::BnRunningVar => *x = rng.uniform_range(0.5, 2.0),
                    _ => {}
                }
            }
        }
    }
    let labels: Vec<String> = (0..CLASSES).map(|i| format!("class {i:02}")).collect();
    let mut meta = HashMap::new();
    meta.insert(
        "labels".to_string(),
        serde_json::to_string(&labels).unwrap(),
    );
    meta.insert(
        "mean".to_string(),
        serde_json::to_string(&IMAGENET_MEAN).unwrap(),
    );
    meta.insert(
        "std".to_string(),
        serde_json::to_string(&IMAGENET_STD).unwrap(),
    );
    meta.insert("input_size".to_string(), INPUT_SIZE.to_string());
    io::to_safetensors_bytes_with_metadata(&dict, Some(meta)).unwrap()
}

/// A fixed opaque RGBA image of an odd, non-square size (exercises resize + center crop).
fn fixture_image() -> Vec<u8> {
    let mut rng = Rng::new(7);
    let mut rgba = Vec::with_capacity((IMAGE_W * IMAGE_H * 4) as usize);
    for y in 0..IMAGE_H {
        for x in 0..IMAGE_W {
            let n = (rng.uniform() * 40.0) as u32;
            let r = (x * 255 / IMAGE_W + n) % 256;
            let g = ((y * 255 / IMAGE_H) ^ (x * 3)) % 256;
            let b = (((x as i32 - 75).pow(2) + (y as i32 - 48).pow(2)) as u32 / 12 + n) % 256;
            rgba.extend_from_slice(&[r as u8, g as u8, b as u8, 255]);
        }
    }
    rgba
}

fn encode_png(rgba: &[u8], path: &Path) {
    let img = image::RgbaImage::from_raw(IMAGE_W, IMAGE_H, rgba.to_vec()).unwrap();
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Native {
    logits: Vec<f32>,
    top5: Vec<usize>,
    infer_ms: f64,
    step_ms: f64,
    adapter: String,
}

/// The native reference: same bytes, same loader, same preprocessing. Also times inference and a
/// training step of the page's default network on this machine's adapter.
fn native(model_bytes: &[u8], rgba: &[u8]) -> Native {
    let gpu = common::gpu();
    let dict = io::load_safetensors_bytes(model_bytes, "fixture").unwrap();
    let (model, _) = ResNet::from_state_dict(&gpu, &dict, None, true).unwrap();
    let mut clf = Classifier::new(model)
        .with_size(INPUT_SIZE)
        .with_normalization(&IMAGENET_MEAN, &IMAGENET_STD)
        .unwrap();
    let x = clf
        .preprocess_rgba(rgba, IMAGE_W as usize, IMAGE_H as usize)
        .unwrap();
    let logits = clf.logits(&x).unwrap().to_vec().unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top5 = order[..5].to_vec();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        pollster::block_on(clf.classify_rgba(rgba, IMAGE_W as usize, IMAGE_H as usize, 5)).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let infer_ms = median(times);

    // The page's training run as the test sets it: widths 8-16-32-64, one block per stage,
    // ImageNet stem (7x7/2 + max pool), batch 32.
    let train = data::load_idx(
        root().join("web/data/fashion-mnist/train-images-idx3-ubyte"),
        root().join("web/data/fashion-mnist/train-labels-idx1-ubyte"),
        &data::FASHION_MNIST_CLASSES,
    )
    .unwrap();
    let (mean, std) = data::channel_stats(&train);
    let config = ResNetConfig::resnet18(10)
        .with_stem(Stem::ImageNet)
        .with_layers(vec![1, 1, 1, 1])
        .with_widths(vec![8, 16, 32, 64])
        .with_in_channels(1);
    let model = ResNet::new(&gpu, config, &mut Rng::new(1)).unwrap();
    let mut cfg = TrainConfig::new(&mean, &std);
    cfg.batch_size = 32;
    cfg.lr = 0.05;
    cfg.schedule = ScheduleKind::Constant;
    cfg.augment = data::Augment::normalize(&mean, &std);
    let steps = Trainer::steps_for(train.len(), 32);
    let mut trainer = Trainer::new(model, cfg, steps);
    let batches: Vec<_> = trainer.epoch_batches(&train).unwrap().take(6).collect();
    let mut times = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let t0 = Instant::now();
        trainer.step(b).unwrap();
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Native {
        logits,
        top5,
        infer_ms,
        step_ms: median(times),
        adapter: gpu.info().to_string(),
    }
}

// ---------- a static file server for web/ and the fixtures ----------

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn respond(mut stream: TcpStream, mounts: &[(String, PathBuf)]) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let file = mounts.iter().find_map(|(prefix, dir)| {
        let rest = path.strip_prefix(prefix.as_str())?;
        let rest = if rest.is_empty() { "index.html" } else { rest };
        if rest.split('/').any(|c| c == "..") {
            return None;
        }
        let p = dir.join(rest);
        p.is_file().then_some(p)
    });
    let (status, ctype, body) = match file.and_then(|f| std::fs::read(&f).ok().map(|b| (f, b))) {
        Some((f, b)) => ("200 OK", content_type(&f), b),
        None => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(&body));
}

/// Serve `mounts` (URL prefix → directory; longest prefix first) on 127.0.0.1; returns the port.
fn serve(mounts: Vec<(String, PathBuf)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().unwrap().port();
    let mounts = std::sync::Arc::new(mounts);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mounts = mounts.clone();
            std::thread::spawn(move || respond(stream, &mounts));
        }
    });
    port
}

/// Run the driver with a hard deadline; returns its parsed RESULT line and its stderr.
fn drive(chromium: &Path, url: &str, image: &Path, out: &Path) -> (serde_json::Value, String) {
    let mut child = Command::new("node")
        .current_dir(root())
        .arg("web/test/drive.mjs")
        .args([
            "--url",
            url,
            "--steps",
            &TRAIN_STEPS.to_string(),
            "--timeout-s",
            "420",
        ])
        .arg("--image")
        .arg(image)
        .arg("--out")
        .arg(out)
        .arg("--chromium")
        .arg(chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node web/test/drive.mjs");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(480);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser driver did not finish within 480 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stdout = out_thread.join().unwrap();
    let stderr = err_thread.join().unwrap();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!("the driver printed no result\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        });
    (serde_json::from_str(line).expect("driver JSON"), stderr)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default()
}

#[test]
fn browser_matches_native_and_trains() {
    let chromium = check_tools();
    let t0 = Instant::now();
    let wasm_bytes = build_wasm();
    let build_s = t0.elapsed().as_secs_f64();
    make_subset();

    let work = target_dir().join("browser-test");
    let fixtures = work.join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    let model = fixture_model();
    std::fs::write(fixtures.join("model.safetensors"), &model).unwrap();
    let rgba = fixture_image();
    let image = fixtures.join("image.png");
    encode_png(&rgba, &image);
    let native = native(&model, &rgba);

    let port = serve(vec![
        ("/fixtures/".to_string(), fixtures.clone()),
        ("/".to_string(), root().join("web")),
    ]);
    let url = format!("http://127.0.0.1:{port}/?model=/fixtures/model.safetensors");
    let t1 = Instant::now();
    let (r, stderr) = drive(&chromium, &url, &image, &work);
    let browser_s = t1.elapsed().as_secs_f64();
    std::fs::write(work.join("result.json"), format!("{r:#}")).unwrap();
    let dump = || format!("driver result: {r:#}\n--- driver stderr\n{stderr}");

    if let Some(f) = r.get("failure") {
        panic!(
            "the browser run failed: {}\n{}",
            f.as_str().unwrap_or_default(),
            dump()
        );
    }
    let problems = floats_or_strings(&r["problems"]);
    assert!(
        problems.is_empty(),
        "the page logged errors: {problems:#?}\n{}",
        dump()
    );
    assert!(work.join("page.png").exists(), "no screenshot\n{}", dump());

    // The page decoded the PNG to exactly the pixels it was made from.
    assert_eq!(r["image"]["width"], IMAGE_W, "{}", dump());
    assert_eq!(r["image"]["height"], IMAGE_H, "{}", dump());

    // Logits: browser (WebGPU) against native, same weights and image.
    let web = floats(&r["logits"]);
    assert_eq!(web.len(), CLASSES, "{}", dump());
    let worst = web
        .iter()
        .zip(&native.logits)
        .map(|(&w, &n)| (w - n as f64).abs() / (1.0 + (n as f64).abs()))
        .fold(0.0f64, f64::max);
    assert!(
        worst <= 1e-3,
        "browser logits differ from native by up to {worst:.2e} (relative to 1 + |logit|)\nnative {:?}\nweb    {web:?}",
        native.logits
    );
    let web_top: Vec<usize> = r["top"]
        .as_array()
        .expect("top-5")
        .iter()
        .map(|p| p["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(web_top, native.top5, "top-5 classes differ\n{}", dump());

    // Training in the page: 30 steps lower the loss.
    let t = &r["train"];
    assert!(
        t["error"].is_null(),
        "training failed in the page: {}\n{}",
        t["error"],
        dump()
    );
    let losses = floats(&t["losses"]);
    assert_eq!(losses.len(), TRAIN_STEPS, "{}", dump());
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[TRAIN_STEPS - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        last < first,
        "30 training steps in the browser did not lower the loss (first 5 mean {first:.3}, last 5 mean {last:.3}): {losses:?}"
    );

    println!(
        "browser test (Chromium {}):",
        r["browser"].as_str().unwrap_or("?")
    );
    println!("  page adapter: {}", r["gpuStatus"].as_str().unwrap_or("?"));
    println!("  native adapter: {}", native.adapter);
    println!(
        "  wasm: {wasm_bytes} bytes ({:.2} MiB); wasm build {build_s:.0} s, browser run {browser_s:.0} s",
        wasm_bytes as f64 / 1048576.0
    );
    println!(
        "  inference (fixture ResNet-18 widths 16..128, {INPUT_SIZE}x{INPUT_SIZE}, 1 image): browser {:.1} ms (first {:.0} ms), native {:.1} ms",
        r["inferenceMs"].as_f64().unwrap_or(f64::NAN),
        r["firstInferenceMs"].as_f64().unwrap_or(f64::NAN),
        native.infer_ms
    );
    println!(
        "  training step (widths 8..64, ImageNet stem, batch 32, 28x28): browser {:.0} ms (first {:.0} ms), native {:.0} ms",
        t["msPerStep"].as_f64().unwrap_or(f64::NAN),
        t["firstStepMs"].as_f64().unwrap_or(f64::NAN),
        native.step_ms
    );
    println!(
        "  logits max deviation {worst:.2e}; loss {first:.3} -> {last:.3} over {TRAIN_STEPS} steps"
    );
    println!("  screenshot: {}", work.join("page.png").display());
}

fn floats_or_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}
