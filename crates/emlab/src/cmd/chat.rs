//! `emlab chat`: interactive chat with streaming output.

use super::common::{ModelOpt, SampleOpt};
use anyhow::Result;
use emlab_model::chat::Message;
use emlab_model::generate::Event;
use std::io::{BufRead, Write};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelOpt,
    #[command(flatten)]
    sample: SampleOpt,
    /// System prompt (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    /// Ask one question, print the answer and exit.
    #[arg(long)]
    once: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let lm = a.model.load()?;
    let mut params = a.sample.params();
    params.batch_size = 1;
    let mut history: Vec<Message> = a.system.iter().map(|s| Message::system(s.clone())).collect();
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    let interactive = a.once.is_none();
    let mut once = a.once.clone();
    loop {
        let line = match once.take() {
            Some(q) => q,
            None if interactive => {
                eprint!("> ");
                std::io::stderr().flush()?;
                let mut s = String::new();
                if stdin.lock().read_line(&mut s)? == 0 {
                    break;
                }
                s.trim_end().to_string()
            }
            None => break,
        };
        if line.is_empty() {
            continue;
        }
        if line == "/reset" {
            history.retain(|m| m.role == "system");
            continue;
        }
        history.push(Message::user(line));
        let prompt = lm.chat_prompt(&history)?;
        let mut stream = lm.tokenizer.stream(true);
        let mut out = std::io::stdout();
        let mut err: Option<emlab_model::Error> = None;
        let res = lm.sample_texts(&[prompt], &[a.sample.seed.wrapping_add(turn)], &params, None, &mut |_, ev| {
            if let Event::Token(t) = ev {
                match stream.step(t) {
                    Ok(Some(s)) => {
                        let _ = write!(out, "{s}");
                        let _ = out.flush();
                    }
                    Ok(None) => {}
                    Err(e) => err = Some(e),
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        println!("{}", stream.finish()?);
        history.push(Message::assistant(res[0].text.clone()));
        turn += 1;
        if !interactive {
            break;
        }
    }
    Ok(())
}
