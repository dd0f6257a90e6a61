//! The container images, checked without a Docker engine (there is none here): both Dockerfiles
//! pass `hadolint` (installed by `scripts/install-test-servers.sh`), their runtime stages run as
//! an unprivileged user with OCI labels and no HEALTHCHECK, and every shared library the `vidx`
//! binary loads (`ldd`) belongs to a Debian package that the CPU image installs, to one of their
//! dependencies, or to the base image.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::VIDX;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What `debian:bookworm-slim` already has that `vidx` links (the C and C++ runtimes).
const BASE_PACKAGES: [&str; 3] = ["libc6", "libgcc-s1", "libstdc++6"];

fn dockerfile(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

fn hadolint(path: &Path) -> std::process::Output {
    Command::new(common::tool("hadolint"))
        .arg(path)
        .output()
        .expect("hadolint runs (scripts/install-test-servers.sh installs it)")
}

#[test]
fn both_dockerfiles_pass_hadolint() {
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let output = hadolint(&dockerfile(name));
        assert!(
            output.status.success(),
            "hadolint {name}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The lint can fail: an install that keeps apt's lists and recommends is flagged.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    let text = std::fs::read_to_string(dockerfile("Dockerfile")).unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "USER 10001:10001",
            "RUN apt-get install curl\nUSER 10001:10001",
        ),
    )
    .unwrap();
    let output = hadolint(&bad);
    assert!(!output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("DL3015"), "{report}");
}

/// The lines of the last stage (the runtime) of a Dockerfile, continuations joined.
fn runtime_stage(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dockerfile(name)).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let last_from = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("a FROM");
    lines[last_from..].to_vec()
}

/// The packages a stage's `apt-get install` lines install.
fn installed_packages(stage: &[String]) -> BTreeSet<String> {
    stage
        .iter()
        .filter_map(|line| line.split_once("apt-get install"))
        .flat_map(|(_, rest)| {
            rest.split("&&")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter(|word| !word.starts_with('-'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn runtime_stages_are_unprivileged_labelled_and_hold_only_the_binary() {
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let stage = runtime_stage(name);
        let user = stage
            .iter()
            .rev()
            .find_map(|line| line.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{name}: no USER"));
        assert_eq!(user, "10001:10001", "{name}");
        assert!(
            !stage.iter().any(|line| line.starts_with("HEALTHCHECK")),
            "{name}: Kubernetes probes, not a HEALTHCHECK"
        );
        let labels = stage
            .iter()
            .find(|line| line.starts_with("LABEL "))
            .unwrap_or_else(|| panic!("{name}: no LABEL"));
        for key in ["title", "description", "version", "licenses", "source"] {
            assert!(
                labels.contains(&format!("org.opencontainers.image.{key}=")),
                "{name}: no {key} label"
            );
        }
        let copies: Vec<&String> = stage
            .iter()
            .filter(|line| line.starts_with("COPY"))
            .collect();
        assert_eq!(
            copies,
            ["COPY --from=build /usr/local/bin/vidx /usr/local/bin/vidx"],
            "{name}"
        );
        assert!(
            stage.iter().any(|line| line == "ENTRYPOINT [\"vidx\"]"),
            "{name}"
        );
        let packages = installed_packages(&stage);
        assert!(packages.contains("ca-certificates"), "{name}: {packages:?}");
        // The same FFmpeg libraries in both images (their sonames differ by release).
        for library in [
            "libavcodec",
            "libavformat",
            "libavutil",
            "libswscale",
            "libswresample",
            "libavfilter",
            "libavdevice",
        ] {
            assert!(
                packages.iter().any(|package| package.starts_with(library)
                    && package[library.len()..].chars().all(|c| c.is_ascii_digit())),
                "{name}: no {library}: {packages:?}"
            );
        }
        assert!(
            !packages.iter().any(|package| package.ends_with("-dev")),
            "{name}: headers in the runtime: {packages:?}"
        );
    }
    let cuda = std::fs::read_to_string(dockerfile("Dockerfile.cuda")).unwrap();
    assert!(cuda.contains("ARG CUDA_VERSION=13."), "CUDA 13");
    assert!(cuda.contains("-runtime-ubuntu${UBUNTU_RELEASE} AS runtime"));
    assert!(cuda.contains("cargo build --release --locked --features cuda"));
}

/// Which installed package owns each shared library, from dpkg's file lists
/// (`/var/lib/dpkg/info/PACKAGE[:ARCH].list`), read once.
fn library_owners() -> std::collections::HashMap<String, String> {
    let mut owners = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/var/lib/dpkg/info").expect("a dpkg system") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|extension| extension.to_str()) != Some("list") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy();
        let package = stem.split(':').next().unwrap_or(&stem).to_owned();
        for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            if line.contains(".so") {
                owners.insert(line.to_owned(), package.clone());
            }
        }
    }
    owners
}

/// The package that owns `path`, trying the path as ldd gives it, then with /usr added or
/// removed, then resolved (Debian 12 merged /lib into /usr/lib; dpkg records either).
fn owner(owners: &std::collections::HashMap<String, String>, path: &str) -> Option<String> {
    let mut candidates = vec![
        path.to_owned(),
        path.strip_prefix("/usr")
            .map_or_else(|| format!("/usr{path}"), str::to_owned),
    ];
    if let Ok(resolved) = std::fs::canonicalize(path) {
        let resolved = resolved.to_string_lossy().into_owned();
        candidates.push(
            resolved
                .strip_prefix("/usr")
                .map_or_else(|| format!("/usr{resolved}"), str::to_owned),
        );
        candidates.push(resolved);
    }
    candidates
        .iter()
        .find_map(|candidate| owners.get(candidate).cloned())
}

/// `packages` and everything they depend on (Depends and Pre-Depends of installed packages,
/// read from dpkg's database in one call).
fn dependency_closure(packages: &BTreeSet<String>) -> BTreeSet<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\n"])
        .output()
        .unwrap();
    let database = String::from_utf8_lossy(&output.stdout);
    let mut depends: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in database.lines() {
        let Some((package, list)) = line.split_once('\t') else {
            continue;
        };
        // "libx264-164 (>= 2:0.164) | libx264-dev": each alternative installed counts.
        let names = list
            .split([',', '|'])
            .filter_map(|choice| choice.split_whitespace().next())
            .map(|name| name.split(':').next().unwrap_or(name))
            .filter(|name| !name.is_empty());
        depends.entry(package).or_default().extend(names);
    }
    let mut closure = BTreeSet::new();
    let mut queue: VecDeque<String> = packages.iter().cloned().collect();
    while let Some(package) = queue.pop_front() {
        if !closure.insert(package.clone()) {
            continue;
        }
        for name in depends.get(package.as_str()).into_iter().flatten() {
            queue.push_back((*name).to_owned());
        }
    }
    closure
}

#[test]
fn every_library_the_binary_links_is_installed_by_the_cpu_image() {
    let output = Command::new("ldd").arg(VIDX).output().expect("ldd runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    let libraries: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            // "libavcodec.so.59 => /lib/x86_64-linux-gnu/libavcodec.so.59 (0x...)", or the
            // loader by its own path; linux-vdso has none.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then_some(path)
        })
        .collect();
    assert!(
        libraries
            .iter()
            .any(|library| library.contains("libavcodec")),
        "vidx links FFmpeg dynamically: {listing}"
    );
    let mut image: BTreeSet<String> = installed_packages(&runtime_stage("Dockerfile"));
    image.extend(BASE_PACKAGES.iter().map(|package| (*package).to_owned()));
    let provided = dependency_closure(&image);
    let owners = library_owners();
    let mut missing = Vec::new();
    for library in &libraries {
        let package =
            owner(&owners, library).unwrap_or_else(|| panic!("no package owns {library}"));
        if !provided.contains(&package) {
            missing.push(format!("{library} ({package})"));
        }
    }
    assert!(
        missing.is_empty(),
        "the CPU image does not install: {missing:?}"
    );
    // The closure is not everything: a package the image never asks for is outside it.
    assert!(!provided.contains("clang"));
}
