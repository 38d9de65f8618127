//! The deployment package: `scripts/package.sh` builds it, and it is what the Functions host
//! on Linux runs. The executable is statically linked (so no C library of the image, whatever
//! its version, is needed), the folder is laid out as the host reads its script root, and the
//! executable starts from that folder as the host starts it and answers the host's probe.
//!
//! The test builds with the `package-check` profile (the release package's target and layout,
//! without optimisation), so the test command does not pay for an optimised build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::Endianness;
use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the package into a fresh folder with `scripts/package.sh`.
fn build_package() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("functionapp");
    let output = Command::new("bash")
        .arg(root().join("scripts/package.sh"))
        .arg(&out)
        .env("VMPOOL_PACKAGE_PROFILE", "package-check")
        .env_remove("VMPOOL_PACKAGE_BUILDER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/package.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (dir, out)
}

/// What makes an ELF executable depend on the machine it runs on: the program interpreter
/// (`PT_INTERP`, the dynamic loader of one C library) and the shared libraries it names
/// (`DT_NEEDED`). A static (or static-pie) executable has neither.
fn dynamic_dependencies(bytes: &[u8]) -> (Option<String>, Vec<String>, u16) {
    let file = ElfFile64::<Endianness>::parse(bytes).expect("an ELF64 executable");
    let endian = file.endian();
    let header = file.elf_header();
    let mut interpreter = None;
    let mut needed = Vec::new();
    for segment in header.program_headers(endian, bytes).unwrap() {
        if segment.p_type(endian) == elf::PT_INTERP {
            let path = segment
                .interpreter(endian, bytes)
                .unwrap()
                .unwrap_or_default();
            interpreter = Some(String::from_utf8_lossy(path).into_owned());
        }
    }
    let sections = header.sections(endian, bytes).unwrap();
    if let Some((entries, strings_index)) = sections.dynamic(endian, bytes).unwrap() {
        let strings = sections.strings(endian, bytes, strings_index).unwrap();
        for entry in entries {
            if entry.tag32(endian) == Some(elf::DT_NEEDED) {
                let name = entry.string(endian, strings).unwrap();
                needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    (interpreter, needed, header.e_machine(endian))
}

#[tokio::test]
async fn the_package_is_a_static_linux_executable_laid_out_for_the_host_that_answers_its_probe() {
    let (_dir, out) = build_package();

    // The layout: host.json at the root, one folder per function with its function.json, and
    // the executable host.json names.
    let host: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("host.json")).unwrap()).unwrap();
    assert_eq!(
        host,
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(root().join("host.json")).unwrap()
        )
        .unwrap()
    );
    let exe_name = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .expect("host.json names the executable");
    let working_dir = host["customHandler"]["description"]["workingDirectory"]
        .as_str()
        .unwrap_or("");
    let defined: BTreeSet<String> = std::fs::read_dir(root().join("function-definitions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let packaged: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(packaged, defined, "one folder per function, nothing else");
    assert!(defined.len() >= 9, "{defined:?}");
    for name in &defined {
        let packaged = std::fs::read(out.join(name).join("function.json")).unwrap();
        let source = std::fs::read(
            root()
                .join("function-definitions")
                .join(name)
                .join("function.json"),
        )
        .unwrap();
        assert_eq!(packaged, source, "{name}/function.json");
    }
    let exe = out.join(exe_name);
    let meta = std::fs::metadata(&exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0,
        "{exe_name} is executable"
    );

    // Statically linked, for x86-64 Linux.
    let bytes = std::fs::read(&exe).unwrap();
    let (interpreter, needed, machine) = dynamic_dependencies(&bytes);
    assert_eq!(machine, elf::EM_X86_64);
    assert_eq!(interpreter, None, "no program interpreter (dynamic loader)");
    assert!(needed.is_empty(), "no shared library: {needed:?}");
    // The check sees dynamic linking where there is some: the vmpool this test binary was
    // built with, for the build machine's glibc, names its loader and its libraries.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let (interpreter, needed, _) =
            dynamic_dependencies(&std::fs::read(env!("CARGO_BIN_EXE_vmpool")).unwrap());
        assert!(interpreter.is_some(), "a glibc build has a loader");
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
    }

    // Started as the host starts it: from the script root (workingDirectory "" means the
    // root), with only the port in FUNCTIONS_CUSTOMHANDLER_PORT; it answers GET / at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let logs = tempfile::tempdir().unwrap();
    let mut child = Command::new(&exe)
        .current_dir(out.join(working_dir))
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.path().join("out")).unwrap())
        .stderr(std::fs::File::create(logs.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = loop {
        if let Ok(res) = http.get(format!("http://127.0.0.1:{port}/")).send().await {
            break res;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the packaged vmpool exited with {status}: {}{}",
                std::fs::read_to_string(logs.path().join("out")).unwrap(),
                std::fs::read_to_string(logs.path().join("err")).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the packaged vmpool did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(probe.status(), 200);
    let body: serde_json::Value = probe.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["service"], "vmpool", "{body}");
    let _ = child.kill();
    let _ = child.wait();
}
