//! Chat templates: the model file's own (`tokenizer.chat_template`, Jinja, rendered with
//! minijinja plus Python-style string methods) and four built-in ones, each rendered for
//! one user message with the generation prompt.
//!
//! `auto` (the default) follows llama.cpp's default chat formatting: a file template of a
//! known family (ChatML, Llama 3, Gemma, Mistral) is rendered with kvscope's built-in
//! template of that family, which writes the same turn markers but no default system
//! prompt (SmolLM2's and Qwen2.5's templates add one); any other file template is rendered
//! as written; a file without one gets the text as is. `--template file` renders the
//! file's own template as written.

use anyhow::{bail, Result};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// A built-in template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    ChatMl,
    Llama3,
    Gemma,
    Mistral,
}

pub const BUILTINS: [Builtin; 4] = [
    Builtin::ChatMl,
    Builtin::Llama3,
    Builtin::Gemma,
    Builtin::Mistral,
];

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::ChatMl => "chatml",
            Builtin::Llama3 => "llama3",
            Builtin::Gemma => "gemma",
            Builtin::Mistral => "mistral",
        }
    }

    /// Tokens the format is written with: a model whose vocabulary lacks them was not
    /// trained on it (none for Mistral's format, which older models write as text).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Builtin::ChatMl => &["<|im_start|>", "<|im_end|>"],
            Builtin::Llama3 => &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            Builtin::Gemma => &["<start_of_turn>", "<end_of_turn>"],
            // Llama 2 and Mistral v0.1 write [INST] as text; v0.3 has it as a token.
            Builtin::Mistral => &[],
        }
    }

    /// The template (Jinja, the same renderer as file templates). ChatML keeps the user's
    /// text as is (kvscope's prompt for SmolLM2 since the start); the others trim it as
    /// their published templates do.
    pub fn source(self) -> &'static str {
        match self {
            Builtin::ChatMl => {
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            }
            Builtin::Llama3 => {
                "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
                 {{ m.content | trim }}<|eot_id|>{% endfor %}\
                 {% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
            }
            Builtin::Gemma => {
                "{{ bos_token }}{% for m in messages %}<start_of_turn>\
                 {{ 'model' if m.role == 'assistant' else m.role }}\n{{ m.content | trim }}<end_of_turn>\n\
                 {% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
            }
            Builtin::Mistral => {
                "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]\
                 {% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
            }
        }
    }
}

/// Which family a file template belongs to, by the turn markers it writes.
pub fn detect(source: &str) -> Option<Builtin> {
    if source.contains("<|im_start|>") {
        Some(Builtin::ChatMl)
    } else if source.contains("<|start_header_id|>") {
        Some(Builtin::Llama3)
    } else if source.contains("<start_of_turn>") {
        Some(Builtin::Gemma)
    } else if source.contains("[INST]") {
        Some(Builtin::Mistral)
    } else {
        None
    }
}

/// `--template NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateChoice {
    #[default]
    Auto,
    File,
    Builtin(Builtin),
}

impl TemplateChoice {
    /// The name `--template` takes.
    pub fn name(self) -> &'static str {
        match self {
            TemplateChoice::Auto => "auto",
            TemplateChoice::File => "file",
            TemplateChoice::Builtin(b) => b.name(),
        }
    }
}

impl std::str::FromStr for TemplateChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(TemplateChoice::Auto),
            "file" => Ok(TemplateChoice::File),
            _ => match BUILTINS.iter().find(|b| b.name() == s) {
                Some(&b) => Ok(TemplateChoice::Builtin(b)),
                None => bail!(
                    "unknown template '{s}': use auto, file, chatml, llama3, gemma or mistral"
                ),
            },
        }
    }
}

/// Values a template may read besides the messages.
pub struct Vars<'a> {
    pub bos_token: &'a str,
    pub eos_token: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// Steps a template may take to render one user turn (minijinja's fuel: about one per
/// instruction). Real chat templates take a few thousand; nested loops over
/// `range(100000)` would take 10^10 and more, so they stop here instead of hanging.
pub const MAX_TEMPLATE_STEPS: u64 = 10_000_000;

/// Most bytes a rendered prompt may have beyond twice the user's text: the prompt cap
/// (8 MiB). Checked while rendering, so a template that would write gigabytes stops at
/// this size instead of filling memory.
pub const MAX_TEMPLATE_EXTRA_BYTES: usize = crate::input::MAX_PROMPT_BYTES as usize;

/// A `fmt::Write` sink that refuses to grow past a limit.
struct Bounded {
    out: String,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        // minijinja writes whole UTF-8 strings, so every chunk is valid UTF-8.
        let s = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.out.push_str(s);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Most memory (resident, in bytes) rendering one message may add. Strings a template
/// builds without writing them (a `namespace` value doubled in a loop, a macro recursing
/// on a growing argument) are not seen by the output bound or the step count: a real
/// chat template needs a few MiB at most.
pub const MAX_TEMPLATE_MEMORY: u64 = 256 << 20;

/// [`render_named`] for "the chat template".
pub fn render(source: &str, user: &str, vars: &Vars) -> Result<String, String> {
    render_named(source, user, vars, "the chat template")
}

/// Renders `source` for one user message `user` with the generation prompt. The error is
/// one line (minijinja's message and where). Rendering is bounded: at most
/// [`MAX_TEMPLATE_STEPS`] steps and `2 * user.len() + MAX_TEMPLATE_EXTRA_BYTES` bytes of
/// output, returned as errors; and at most [`MAX_TEMPLATE_MEMORY`] more resident memory,
/// watched from this thread while another renders: minijinja cannot stop inside one
/// concatenation, so past that bound the process ends with one line naming `name`
/// (after restoring the terminal, as a signal does).
pub fn render_named(source: &str, user: &str, vars: &Vars, name: &str) -> Result<String, String> {
    let Some(start) = resident_bytes() else {
        return render_unwatched(source, user, vars);
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kvscope-template".into())
            .stack_size(8 << 20)
            .spawn_scoped(scope, move || {
                let _ = tx.send(render_unwatched(source, user, vars));
            });
        if spawned.is_err() {
            return render_unwatched(source, user, vars);
        }
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the renderer stopped without a result".into())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if resident_bytes().is_some_and(|now| now.saturating_sub(start) > MAX_TEMPLATE_MEMORY) {
                crate::signals::fail(&format!(
                    "{name} cannot be rendered: it takes more than {} MiB of memory for one message (stopped there); use --template chatml|llama3|gemma|mistral or --raw",
                    MAX_TEMPLATE_MEMORY >> 20
                ));
            }
        }
    })
}

/// Resident memory of this process (None without procfs).
fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    #[cfg(unix)]
    // SAFETY: sysconf has no memory-safety requirements.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    #[cfg(not(unix))]
    let page = 0;
    Some(pages * if page > 0 { page } else { 4096 })
}

fn render_unwatched(source: &str, user: &str, vars: &Vars) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_fuel(Some(MAX_TEMPLATE_STEPS));
    // As Hugging Face renders chat templates (jinja2 with trim_blocks and lstrip_blocks).
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // Python string methods (`.strip()`, `.startswith()`, ...) that HF templates call.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat_template", source)
        .map_err(one_line)?;
    let t = env.get_template("chat_template").map_err(one_line)?;
    let limit = user
        .len()
        .saturating_mul(2)
        .saturating_add(MAX_TEMPLATE_EXTRA_BYTES);
    let mut sink = Bounded {
        out: String::new(),
        limit,
        over: false,
    };
    let r = t.render_captured_to(
        minijinja::context! {
            messages => vec![Message { role: "user", content: user }],
            add_generation_prompt => true,
            bos_token => vars.bos_token,
            eos_token => vars.eos_token,
        },
        &mut sink,
    );
    match r {
        Ok(_) => Ok(sink.out),
        Err(_) if sink.over => Err(format!(
            "it renders more than {limit} bytes for this prompt (stopped there)"
        )),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(format!(
            "it takes more than {MAX_TEMPLATE_STEPS} steps to render one message (stopped there)"
        )),
        Err(e) => Err(one_line(e)),
    }
}

fn one_line(e: Error) -> String {
    let mut s = e.to_string();
    if let Some(d) = e.detail() {
        if !s.contains(d) {
            s = format!("{s}: {d}");
        }
    }
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: Vars = Vars {
        bos_token: "<s>",
        eos_token: "</s>",
    };

    #[test]
    fn hostile_templates_stop_with_one_line() {
        // Three nested range(100000) loops: 10^15 steps.
        let slow = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}";
        let e = render(slow, "hi", &VARS).unwrap_err();
        assert!(e.contains("steps"), "{e}");
        // 100 x 10 MB = 1 GB of output: stopped at the byte limit, long before 1 GB.
        let big = r#"{% for i in range(100) %}{{ "x" * 10000000 }}{% endfor %}"#;
        let e = render(big, "hi", &VARS).unwrap_err();
        assert!(e.contains("renders more than"), "{e}");
        assert!(!e.contains('\n'));
        // Real templates are far inside both limits.
        for b in BUILTINS {
            render(b.source(), &"word ".repeat(100_000), &VARS).expect("renders");
        }
    }

    #[test]
    fn builtins_render_one_user_turn() {
        let r = |b: Builtin| render(b.source(), "Hi there\n", &VARS).expect("renders");
        assert_eq!(
            r(Builtin::ChatMl),
            "<|im_start|>user\nHi there\n<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            r(Builtin::Llama3),
            "<s><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            r(Builtin::Gemma),
            "<s><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(r(Builtin::Mistral), "<s>[INST] Hi there [/INST]");
    }

    #[test]
    fn detects_families_and_parses_names() {
        for b in BUILTINS {
            assert_eq!(detect(b.source()), Some(b));
            assert_eq!(
                b.name().parse::<TemplateChoice>().unwrap(),
                TemplateChoice::Builtin(b)
            );
        }
        assert_eq!(detect("{{ messages[0].content }}"), None);
        assert_eq!(
            "auto".parse::<TemplateChoice>().unwrap(),
            TemplateChoice::Auto
        );
        assert_eq!(
            "file".parse::<TemplateChoice>().unwrap(),
            TemplateChoice::File
        );
        let e = "vicuna".parse::<TemplateChoice>().unwrap_err().to_string();
        assert!(e.contains("vicuna") && e.contains("chatml"), "{e}");
    }

    /// What Hugging Face templates use: Python string methods, `raise_exception`,
    /// `loop`, `namespace`.
    #[test]
    fn python_style_templates_render() {
        let src = "{% set ns = namespace(sys='') %}{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}\
                   {% if m['role'] == 'user' %}{{ '### ' + m['role'].upper() + ': ' + m['content'].strip() }}{% else %}\
                   {{ raise_exception('only user turns') }}{% endif %}{% endfor %}\
                   {% if add_generation_prompt and m is not defined %}\n### ASSISTANT:{% endif %}";
        // trim_blocks drops the newline right after `{% if ... %}`.
        assert_eq!(
            render(src, "  What?  ", &VARS).expect("renders"),
            "<s>### USER: What?### ASSISTANT:"
        );
        let raising = "{{ raise_exception('Conversation roles must alternate') }}";
        let e = render(raising, "x", &VARS).unwrap_err();
        assert!(e.contains("Conversation roles must alternate"), "{e}");
    }

    #[test]
    fn a_broken_template_is_one_line() {
        for src in [
            "{% for m in messages %}",
            "{{ messages[0].content | nosuchfilter }}",
            "{% if %}",
        ] {
            let e = render(src, "x", &VARS).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{src}: {e:?}");
        }
    }
}
