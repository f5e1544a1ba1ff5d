//! `kvctl shell`: one command per line, with history. Verbs are taken in any case (`GET`,
//! `Region List`), keys and values as typed. Besides kvctl's commands it takes QUIT and
//! EXIT, BEGIN [PESSIMISTIC] [NAME], COMMIT and ROLLBACK around get/put/delete/scan
//! statements of one transaction, and SIGNUP NAME, LOGIN NAME and LOGOUT (the password
//! is asked on the terminal, or read as the next input line when input is not one;
//! a login lasts until LOGOUT or the shell ends).

use clap::{CommandFactory, Parser};

use client::{Client, Error, Result};

use super::{run, txn, users, Command, Output, Printer, ReadMode, TxnCommand};

/// A line typed into the shell.
#[derive(Debug, Parser)]
#[command(name = "", no_binary_name = true, disable_version_flag = true)]
struct ShellLine {
    /// Where this line's reads are served (default: the shell's --read).
    #[arg(long, global = true)]
    read: Option<ReadMode>,
    #[command(subcommand)]
    command: Command,
}

/// The words of a line with its leading verbs (a command and its subcommands, or their
/// aliases) spelled as clap knows them, in whatever case they were typed. Keys, values
/// and flags are left as they are.
fn normalize(mut words: Vec<String>) -> Vec<String> {
    let mut cmd = ShellLine::command();
    // A leading `--read MODE` (or `--read=MODE`) comes before the verbs.
    let skip = match words.first().map(String::as_str) {
        Some("--read") => 2,
        Some(w) if w.starts_with("--read=") => 1,
        _ => 0,
    };
    for word in words.iter_mut().skip(skip) {
        let lower = word.to_ascii_lowercase();
        let Some(sub) = cmd
            .get_subcommands()
            .find(|s| s.get_name() == lower || s.get_all_aliases().any(|a| a == lower))
            .cloned()
        else {
            break;
        };
        *word = sub.get_name().to_string();
        cmd = sub;
    }
    words
}

/// What the shell does after a stretch under one identity.
enum Next {
    /// QUIT, EXIT or end of input.
    Quit,
    /// LOGIN or LOGOUT: go on with this client.
    Switch(Box<Client>),
}

/// Runs the interactive shell until QUIT, EXIT or end of input.
pub async fn shell(client: Client, output: Output) -> Result<i32> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Error::InvalidArgument(format!("cannot start the shell: {e}")))?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".kvctl_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut client = client;
    while let Next::Switch(next) = as_one_user(&client, &mut editor, output).await {
        client = *next;
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(0)
}

/// The shell's lines until it ends or its user changes.
async fn as_one_user(
    client: &Client,
    editor: &mut rustyline::DefaultEditor,
    output: Output,
) -> Next {
    let txn_client = client::txn::TxnClient::new(client);
    let mut session = txn::Session::new(&txn_client);
    let next = loop {
        let prompt = session.prompt();
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(_) => break Next::Quit,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
        let mut p = Printer {
            json: output == Output::Json,
            out: &mut stdout,
            err: &mut stderr,
        };
        let Some(words) = shlex::split(line) else {
            p.diagnostic("unbalanced quotes");
            continue;
        };
        if let [one] = words.as_slice() {
            if one.eq_ignore_ascii_case("quit") || one.eq_ignore_ascii_case("exit") {
                break Next::Quit;
            }
        }
        match identity(client, &session, editor, &words, &mut p).await {
            Some(Ok(Some(next))) => break Next::Switch(Box::new(next)),
            Some(Ok(None)) => continue,
            Some(Err(e)) => {
                report(Err(e), &mut p);
                continue;
            }
            None => {}
        }
        if let Some(res) = session.control(&words, &mut p).await {
            report(res, &mut p);
            continue;
        }
        match ShellLine::try_parse_from(normalize(words)) {
            Ok(parsed) => {
                let res = line_command(client, &mut session, parsed, output, &mut p).await;
                report(res, &mut p);
            }
            Err(e) => {
                let _ = e.print();
            }
        }
    };
    // A transaction left open takes its locks with it.
    session.close().await;
    next
}

/// SIGNUP NAME, LOGIN NAME and LOGOUT: `None` for any other line; a client to go on
/// with after LOGIN and LOGOUT.
async fn identity(
    client: &Client,
    session: &txn::Session<'_>,
    editor: &mut rustyline::DefaultEditor,
    words: &[String],
    p: &mut Printer<'_>,
) -> Option<Result<Option<Client>>> {
    let verb = words.first()?.to_ascii_lowercase();
    if !["signup", "login", "logout"].contains(&verb.as_str()) {
        return None;
    }
    Some(
        async {
            if verb != "signup" && session.is_open() {
                return Err(Error::InvalidArgument(
                    "a transaction is open: COMMIT or ROLLBACK first".into(),
                ));
            }
            let name = match (verb.as_str(), words) {
                ("logout", [_]) => {
                    let next = client.with_token(None).await?;
                    p.ok();
                    return Ok(Some(next));
                }
                (_, [_, name]) => name,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "usage: {} NAME",
                        verb.to_uppercase()
                    )))
                }
            };
            let password = shell_password(editor)?;
            if verb == "signup" {
                users::signup(client.pd(), name, &password).await?;
                p.ok();
                return Ok(None);
            }
            let (token, _) = users::login(client.pd(), name, &password).await?;
            let next = client.with_token(Some(token)).await?;
            p.line(format!("OK: logged in as {name}"));
            Ok(Some(next))
        }
        .await,
    )
}

/// A password for SIGNUP or LOGIN: asked on the terminal without echo, or, when input is
/// not a terminal, the next input line (never kept in the history).
fn shell_password(editor: &mut rustyline::DefaultEditor) -> Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ")
            .map_err(|e| Error::InvalidArgument(format!("reading the password: {e}")))?
    } else {
        editor
            .readline("")
            .map_err(|e| Error::InvalidArgument(format!("reading the password: {e}")))?
    };
    auth::names::check_password(&password).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(password)
}

/// Runs one parsed line: inside the open transaction if it is a statement and one is
/// open, on its own otherwise.
async fn line_command(
    client: &Client,
    session: &mut txn::Session<'_>,
    parsed: ShellLine,
    output: Output,
    p: &mut Printer<'_>,
) -> Result<i32> {
    let open = session.is_open();
    let refuse = |why: &str| Err(Error::InvalidArgument(why.into()));
    match &parsed.command {
        Command::Shell => return refuse("already in the shell"),
        Command::Put { ttl: Some(_), .. } if open => {
            return refuse("a transaction cannot give a key a time to live (put --ttl)")
        }
        Command::Batch { .. } if open => {
            return refuse("a transaction is open: BATCH runs as a transaction of its own")
        }
        _ => {}
    }
    let read = parsed.read.unwrap_or(client.read_mode());
    if let Some(stmt) = in_transaction(&parsed.command) {
        if let Some(res) = session.statement(&stmt, p).await {
            return res;
        }
    }
    run(&parsed.command, output, read, client, p.out, p.err).await
}

/// A shell command's failure, as a line on stderr.
fn report(res: Result<i32>, p: &mut Printer<'_>) {
    if let Err(e) = res {
        p.diagnostic(&format!("error: {e}"));
    }
}

/// The statement a command is inside an open transaction: get, has, put, delete and
/// scan, plain or under `txn`.
fn in_transaction(cmd: &Command) -> Option<TxnCommand> {
    Some(match cmd {
        Command::Get { key } => TxnCommand::Get { key: key.clone() },
        Command::Has { key } => TxnCommand::Has { key: key.clone() },
        Command::Put {
            key,
            value,
            ttl: None,
        } => TxnCommand::Put {
            key: key.clone(),
            value: value.clone(),
        },
        Command::Delete { key } => TxnCommand::Delete { key: key.clone() },
        Command::Scan { start, end, limit } => TxnCommand::Scan {
            start: start.clone(),
            end: end.clone(),
            limit: *limit,
        },
        Command::Txn { command } if !matches!(command, TxnCommand::Status { .. }) => {
            command.clone()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        normalize(shlex::split(line).unwrap())
    }

    #[test]
    fn verbs_in_any_case_and_aliases_keys_as_typed() {
        assert_eq!(words("GET Key"), ["get", "Key"]);
        assert_eq!(words("SET K V"), ["put", "K", "V"]);
        assert_eq!(words("Region LIST"), ["region", "list"]);
        assert_eq!(
            words("HAS get"),
            ["has", "get"],
            "a key named like a verb stays"
        );
        assert_eq!(words("txn PUT PUT x"), ["txn", "put", "PUT", "x"]);
        assert_eq!(words("nonsense GET"), ["nonsense", "GET"]);
        assert_eq!(
            words("--read follower GET k"),
            ["--read", "follower", "get", "k"]
        );
        assert_eq!(words("--read=leader HAS k"), ["--read=leader", "has", "k"]);
        let parsed = ShellLine::try_parse_from(words("set a b --TTL 5s"));
        assert!(parsed.is_err(), "flags are not verbs");
    }
}
