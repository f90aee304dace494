//! An absurd SAE width (a typo in `--latents`) is a config error, not an allocator abort.
use emlab_sae::train::{Architecture, TrainConfig, Trainer};

#[test]
fn an_sae_too_large_to_allocate_is_a_config_error() {
    // 32 x 1e11 latents: ~78 TB of weights and Adam state (the process aborted before).
    let e = Trainer::new(TrainConfig::new(32, 100_000_000_000, Architecture::TopK { k: 4 })).err().expect("refused").to_string();
    assert!(e.contains("d_sae 100000000000") && e.contains("GB") && e.contains("fewer latents"), "{e}");
    // A size that overflows usize (a panic in debug builds before).
    let e = Trainer::new(TrainConfig::new(1 << 40, 1 << 40, Architecture::TopK { k: 4 })).err().expect("refused").to_string();
    assert!(e.contains("more memory than can be addressed"), "{e}");
    // An ordinary one still builds.
    assert!(Trainer::new(TrainConfig::new(32, 64, Architecture::TopK { k: 4 })).is_ok());
}
