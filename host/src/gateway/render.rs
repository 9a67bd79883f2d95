//! Chat templates from model files, rendered in a helper process behind a memory limit.
//!
//! A template is code from the file. minijinja's fuel bounds its instructions, but nothing
//! bounds its allocations: a string doubled forty times asks for a terabyte in a few hundred
//! instructions. Rendered inside the host, such a template would take the host down with every
//! other model. So the host renders a file's template in `modelhost render-templates`, a child
//! with `RLIMIT_AS` at [`MEMORY_LIMIT`]: the child dies, the request gets an error that says
//! why, and the next render starts a fresh child. Built-in formats (gemma, chatml) run no
//! template code and are rendered in the host.
//!
//! The helper reads one JSON job per line on standard input and writes one JSON answer per line
//! on standard output (`{"prompt": ...}` or `{"error": ...}`).

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::Duration;

use modelhost_text::chat::{ChatInput, ChatTemplate};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// The address space a render may use (the helper's code and the template's values).
pub const MEMORY_LIMIT: u64 = 1 << 30;
/// A render's time limit; fuel stops a loop well before it in practice.
const RENDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Compiled templates the helper keeps, by source.
const COMPILED_KEPT: usize = 16;

/// One render.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderJob {
    pub source: String,
    pub messages: serde_json::Value,
    pub tools: Option<serde_json::Value>,
    pub add_generation_prompt: bool,
    pub bos_token: String,
    pub eos_token: String,
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    pub now: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Prompt(String),
    Error(String),
}

/// Why a render failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The template's own error (a syntax error, `raise_exception`, out of fuel).
    #[error("{0}")]
    Template(String),
    /// The helper died or hung: the template exceeded the memory or time limit.
    #[error("rendering the model's chat template {0}")]
    Limit(String),
}

struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The host's side: one helper, started on first use and after each death. Renders take
/// milliseconds and run one at a time.
#[derive(Default)]
pub struct Renderer {
    helper: Mutex<Option<Helper>>,
}

impl Renderer {
    pub async fn render(&self, job: &RenderJob) -> Result<String, RenderError> {
        let mut line = serde_json::to_vec(job).map_err(|e| RenderError::Template(e.to_string()))?;
        line.push(b'\n');
        let mut guard = self.helper.lock().await;
        if guard.is_none() {
            *guard =
                Some(spawn().map_err(|e| RenderError::Limit(format!("could not start: {e}")))?);
        }
        let helper = guard.as_mut().expect("just started");
        let exchange = async {
            helper.stdin.write_all(&line).await?;
            helper.stdin.flush().await?;
            let mut answer = String::new();
            let n = helper.stdout.read_line(&mut answer).await?;
            Ok::<_, std::io::Error>((n, answer))
        };
        let outcome = tokio::time::timeout(RENDER_TIMEOUT, exchange).await;
        let failure = match outcome {
            Ok(Ok((n, answer))) if n > 0 => {
                return match serde_json::from_str::<Answer>(&answer) {
                    Ok(Answer::Prompt(p)) => Ok(p),
                    Ok(Answer::Error(e)) => Err(RenderError::Template(e)),
                    Err(e) => Err(RenderError::Limit(format!("gave a bad answer: {e}"))),
                };
            }
            Ok(Ok(_)) | Ok(Err(_)) => format!(
                "stopped the renderer (over its {} MiB memory limit, or a crash)",
                MEMORY_LIMIT >> 20
            ),
            Err(_) => format!("took over {} s", RENDER_TIMEOUT.as_secs()),
        };
        if let Some(mut dead) = guard.take() {
            let _ = dead.child.start_kill();
            let _ = dead.child.wait().await;
        }
        Err(RenderError::Limit(failure))
    }
}

fn spawn() -> std::io::Result<Helper> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("render-templates")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec only setrlimit and prctl run, both async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok(Helper {
        child,
        stdin,
        stdout,
    })
}

/// `modelhost render-templates`: the helper's loop. It ends when its input does.
pub fn helper_main() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut compiled: Vec<(String, ChatTemplate)> = Vec::new();
    for line in stdin.lock().lines() {
        let line = line?;
        let answer = match serde_json::from_str::<RenderJob>(&line) {
            Err(e) => Answer::Error(format!("a bad job: {e}")),
            Ok(job) => render_here(&mut compiled, &job),
        };
        let mut text = serde_json::to_vec(&answer)?;
        text.push(b'\n');
        out.write_all(&text)?;
        out.flush()?;
    }
    Ok(())
}

fn render_here(compiled: &mut Vec<(String, ChatTemplate)>, job: &RenderJob) -> Answer {
    let at = match compiled.iter().position(|(s, _)| *s == job.source) {
        Some(at) => at,
        None => match ChatTemplate::jinja(&job.source) {
            Ok(t) => {
                if compiled.len() >= COMPILED_KEPT {
                    compiled.remove(0);
                }
                compiled.push((job.source.clone(), t));
                compiled.len() - 1
            }
            Err(e) => return Answer::Error(e.to_string()),
        },
    };
    let input = ChatInput {
        messages: &job.messages,
        tools: job.tools.as_ref(),
        add_generation_prompt: job.add_generation_prompt,
        bos_token: &job.bos_token,
        eos_token: &job.eos_token,
        extra: job.extra.as_ref(),
        now: job.now,
    };
    match compiled[at].1.render(&input) {
        Ok(p) => Answer::Prompt(p),
        Err(e) => Answer::Error(e.to_string()),
    }
}
