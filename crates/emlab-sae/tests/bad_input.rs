//! An absurd SAE width (a typo in `--latents`) is a config error, not an allocator abort.
use emlab_sae::train::{Architecture, TrainConfig, Trainer};

#[test]
fn an_sae_too_large_to_allocate_is_a_config_error() {
    // 32 x 1e11 latents: ~78 TB of weights and Adam state (the process aborted before).
    let e = Trainer::new(TrainConfig::new(32, 100_000_000_000, Architecture::TopK { k: 4 })).expect_err("refused").to_string();
    assert!(e.contains("d_sae 100000000000") && e.contains("GB") && e.contains("fewer latents"), "{e}");
    // A size that overflows usize (a panic in debug builds before).
    let e = Trainer::new(TrainConfig::new(1 << 40, 1 << 40, Architecture::TopK { k: 4 })).expect_err("refused").to_string();
    assert!(e.contains("more memory than can be addressed"), "{e}");
    // An ordinary one still builds.
    assert!(Trainer::new(TrainConfig::new(32, 64, Architecture::TopK { k: 4 })).is_ok());
}

mod replacing_an_sae {
    use emlab_sae::{load_sae, load_sparsity, save_sae, Activation, Sae};
    use std::path::Path;

    fn sae(d_in: usize, d_sae: usize, fill: f32) -> Sae {
        let w = |n: usize| (0..n).map(|i| fill + i as f32 * 1e-3).collect::<Vec<f32>>();
        Sae::from_parts(d_in, d_sae, Activation::TopK { k: 2 }, w(d_in * d_sae), w(d_sae * d_in), w(d_sae), w(d_in)).unwrap()
    }

    fn copy(from: &Path, to: &Path, name: &str) {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }

    #[test]
    fn weights_of_another_save_are_refused_not_paired_with_this_config() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        save_sae(&a, &sae(4, 8, 0.5), Some(&[-1.0; 8])).unwrap();
        save_sae(&b, &sae(4, 8, -0.25), Some(&[-2.0; 8])).unwrap();
        // What a save killed between its renames would leave with a config written first:
        // the same shapes, so nothing but the save's id tells the files apart.
        copy(&b, &a, "sae_weights.safetensors");
        let e = load_sae(&a).unwrap_err().to_string();
        assert!(e.contains("a/sae_weights.safetensors") && e.contains("was not written together with") && e.contains("cfg.json"), "{e}");
        copy(&b, &a, "sae_weights.safetensors");
        copy(&b, &a, "cfg.json");
        assert_eq!(load_sae(&a).unwrap(), load_sae(&b).unwrap());
        let e = load_sparsity(&a, 8).unwrap_err().to_string();
        assert!(e.contains("sparsity.safetensors") && e.contains("was not written together with"), "{e}");
    }

    #[test]
    fn a_replaced_sae_keeps_no_file_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sae");
        save_sae(&p, &sae(4, 8, 0.5), Some(&[-1.0; 8])).unwrap();
        let new = sae(4, 8, 0.75);
        save_sae(&p, &new, None).unwrap();
        assert_eq!(load_sae(&p).unwrap(), new);
        // The old densities described the old latents: gone, not read as the new ones'.
        assert_eq!(load_sparsity(&p, 8).unwrap(), None);
        let names: Vec<String> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn a_save_killed_before_its_renames_or_between_them_leaves_no_mixed_sae() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sae");
        let old = sae(4, 8, 0.5);
        save_sae(&p, &old, None).unwrap();
        // Killed while staging: the staged files of the next save lie beside the old SAE,
        // which still loads as it was.
        std::fs::write(p.join("sae_weights.safetensors.tmp-partial"), b"half a file").unwrap();
        std::fs::write(p.join("cfg.json.tmp-partial"), b"{").unwrap();
        assert_eq!(load_sae(&p).unwrap(), old);
        // Killed between removing cfg.json and renaming the new one in: not an SAE, and says so.
        std::fs::remove_file(p.join("cfg.json")).unwrap();
        let e = load_sae(&p).unwrap_err().to_string();
        assert!(e.contains("has sae_weights.safetensors but no cfg.json"), "{e}");
        // The next save completes over the leftovers.
        let new = sae(4, 6, 0.1);
        save_sae(&p, &new, None).unwrap();
        assert_eq!(load_sae(&p).unwrap(), new);
    }

    #[test]
    fn an_activation_store_is_not_written_into() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("acts");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("index.json"), r#"{"format": "emlab-acts-v1", "hooks": []}"#).unwrap();
        let e = save_sae(&store, &sae(4, 8, 0.5), None).unwrap_err().to_string();
        assert!(e.contains("acts") && e.contains("is an activation store"), "{e}");
        assert!(!store.join("cfg.json").exists() && !store.join("sae_weights.safetensors").exists());
        // A folder with another index.json (not a store) is fine.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("index.json"), r#"{"pages": 3}"#).unwrap();
        save_sae(&other, &sae(4, 8, 0.5), None).unwrap();
        // And a file is not a folder.
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(save_sae(&f, &sae(4, 8, 0.5), None).unwrap_err().to_string().contains("not a folder"));
    }
}
