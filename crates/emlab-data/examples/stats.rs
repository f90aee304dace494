//! Print dataset statistics: `cargo run -p emlab-data --example stats -- FILE.jsonl [--json]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let mut failed = false;
    for path in args.iter().filter(|a| *a != "--json") {
        match emlab_data::stats::stats_file(path) {
            Ok(s) if json => println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
            Ok(s) => print!("{}", s.render_text()),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
