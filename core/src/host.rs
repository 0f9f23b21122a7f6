//! Commands run on a segment's host: the shell scripts for every recovery
//! step that touches a segment's files or processes, and the command line
//! that runs one there, directly (`sh -c`) when the host is the
//! coordinator's own, otherwise through the remote shell (ssh), as
//! Greenplum drives its segment hosts.
//!
//! Every value put into a script is quoted with [`quote`], so a data
//! directory with a space, quote or semicolon stays one argument, locally
//! and on the far side of ssh alike.

use crate::error::CoreError;

/// The default of gp_recovery.remote_shell: never ask for a password (a job
/// must fail, not hang), and give up on a dead host after 10 s.
pub const DEFAULT_REMOTE_SHELL: &std::ffi::CStr = c"ssh -o BatchMode=yes -o ConnectTimeout=10";

/// ssh's exit code when it could not connect or log in.
pub const SSH_FAILED: i32 = 255;

/// A word for a POSIX shell: single-quoted, with inner quotes closed and
/// reopened around an escaped one.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Splits a setting such as gp_recovery.remote_shell into words, with
/// single quotes, double quotes and backslashes as a shell reads them.
pub fn split_words(s: &str) -> Result<Vec<String>, CoreError> {
    let invalid =
        |expected| CoreError::InvalidValue { what: "gp_recovery.remote_shell", value: s.to_string(), expected };
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(invalid("a closing single quote")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or_else(|| invalid("a closing double quote"))?),
                        Some(c) => w.push(c),
                        None => return Err(invalid("a closing double quote")),
                    }
                }
            }
            '\\' => {
                word.get_or_insert_with(String::new).push(chars.next().ok_or_else(|| invalid("a character after \\"))?)
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(invalid("a command such as ssh"));
    }
    Ok(words)
}

/// True when `host` names the coordinator's own machine: localhost, a
/// loopback address, the machine's host name, or one of `local_hosts` (the
/// comma-separated gp_recovery.local_hosts).
pub fn is_local(host: &str, own_name: &str, local_hosts: &str) -> bool {
    let host = host.trim();
    ["localhost", "127.0.0.1", "::1", own_name]
        .into_iter()
        .chain(local_hosts.split(',').map(str::trim))
        .any(|name| !name.is_empty() && name.eq_ignore_ascii_case(host))
}

/// The program and arguments that run `script` on a host: `sh -c` when
/// `remote_shell` is None, else the remote shell's words, the host, and the
/// script as one command line.
///
/// The script runs in a session of its own, while a watcher reads the
/// command's standard input: when it closes (the job is canceled, or the
/// worker or ssh died) the watcher ends the whole session, on whichever
/// host it runs. The caller keeps standard input open while it waits.
pub fn command_line(remote_shell: Option<(&[String], &str)>, script: &str) -> Vec<String> {
    let wrapped = format!(
        "exec 3<&0\n\
         setsid sh -c {} </dev/null &\n\
         p=$!\n\
         {{ cat <&3 >/dev/null; kill -TERM -\"$p\" 2>/dev/null || kill -TERM \"$p\"; }} >/dev/null 2>&1 &\n\
         w=$!\n\
         exec 3<&-\n\
         wait \"$p\"; rc=$?\n\
         kill \"$w\" 2>/dev/null\n\
         exit $rc",
        quote(script)
    );
    match remote_shell {
        None => vec!["sh".into(), "-c".into(), wrapped],
        Some((words, host)) => {
            let mut argv = words.to_vec();
            // ssh reads no option after "--": a host name can never be one
            // (they are also refused when a segment is registered or moved).
            if words.first().is_some_and(|w| w == "ssh" || w.ends_with("/ssh")) {
                argv.push("--".into());
            }
            argv.push(host.to_string());
            argv.push(wrapped);
            argv
        }
    }
}

/// Runs a [`command_line`] to its end, holding its standard input open
/// meanwhile (closed, it would end the script), and collects its output.
pub fn output(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let held = child.stdin.take();
    let out = child.wait_with_output();
    drop(held);
    out
}

/// rsync's exit code for "some source files vanished before they could be
/// transferred": dropped tables during a differential copy.
pub const RSYNC_VANISHED: i32 = 24;

/// Whether a step's tool ended well by its exit code. rsync's
/// [`RSYNC_VANISHED`] is a success: the WAL replayed from the backup start
/// covers whatever vanished.
pub fn exit_ok(tool: &str, code: Option<i32>) -> bool {
    code == Some(0) || (tool == "rsync" && code == Some(RSYNC_VANISHED))
}

/// The last `n` non-empty lines of a step's output, for error texts
/// (progress output separates its lines with carriage returns).
pub fn last_lines(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// The job's error for a step whose remote shell could not reach the host.
pub fn unreachable(host: &str, output: &str) -> String {
    let detail = last_lines(output, 2);
    if detail.is_empty() {
        format!("host {host} is unreachable")
    } else {
        format!("host {host} is unreachable: {detail}")
    }
}

/// Who a job's steps act for: the job, its segment and the pair's database
/// system identifier. A directory the job makes carries its claim, and a
/// server is stopped only when it is the pair's.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    pub job: i64,
    pub dbid: i16,
    pub system_identifier: String,
}

/// The coordinator as the scripts recognise it: on its own machine
/// (`machine`, as [`crate::identity::HostReport`] names machines), its
/// data directory by device and inode, anywhere its database system
/// identifier. No step ever acts on it.
#[derive(Debug, Clone, Default)]
pub struct Coordinator {
    pub machine: String,
    pub datadir: crate::identity::PathId,
    pub system_identifier: String,
}

/// The scripts of the recovery steps, for servers whose programs are in
/// `bindir` on every host (as Greenplum's GPHOME is).
#[derive(Debug, Clone, Default)]
pub struct Scripts {
    pub bindir: String,
    pub connect_timeout: u64,
    pub coordinator: Coordinator,
    pub owner: Owner,
}

/// Shell functions every script may use: `refuse` (exit [`REFUSED`] with
/// the reason), `machine` (this machine's machine-id and boot id: device
/// and inode numbers mean something only within one boot of one machine)
/// and `chain PATH` ("E DEV:INO..." of the path after every link is
/// followed, E 1 when it exists, then each existing directory above it up
/// to /).
const SHELL_LIB: &str = "refuse() { echo \"refused: $*\" >&2; exit 6; }\n\
     machine() { m=; if [ -r /etc/machine-id ]; then read -r m < /etc/machine-id; fi; [ -n \"$m\" ] || m=$(hostname)\n\
     b=; if [ -r /proc/sys/kernel/random/boot_id ]; then read -r b < /proc/sys/kernel/random/boot_id; fi; echo \"$m/$b\"; }\n\
     chain() { r=$(realpath -m -- \"$1\" 2>/dev/null) || r=$1; case \"$r\" in /*) ;; *) r=/$r;; esac\n\
     e=0; if [ -e \"$r\" ]; then e=1; fi; set --; l=$r\n\
     while :; do if [ -e \"$l\" ]; then set -- \"$@\" \"$l\"; fi; [ \"$l\" = / ] && break; l=${l%/*}; [ -n \"$l\" ] || l=/; done\n\
     echo $e $(stat -L -c %d:%i -- \"$@\"); }\n";

/// The exit code of a step that refused to act: what it would have
/// touched is not proven to be the job's own.
pub const REFUSED: i32 = 6;

/// Beside a data directory while a job's copy lives there: `job J dbid N
/// dir DEV:INO`. Only the job it names empties, moves or deletes what is
/// beside or in that directory; a later job of the same segment may remove
/// what an ended one left.
pub const CLAIM_SUFFIX: &str = ".gp_recovery_job";
/// Put into an old directory before it is renamed for deletion: only a
/// directory holding it is ever deleted in the background.
pub const DISCARD_MARK: &str = ".gp_recovery_discard";

/// The sibling paths a full recovery uses next to a data directory.
pub fn sibling(datadir: &str, suffix: &str) -> String {
    format!("{}{suffix}", datadir.trim_end_matches('/'))
}
pub const NEW_SUFFIX: &str = ".gp_recovery_new";
/// Where a full recovery in place keeps the copy (NEW_SUFFIX) and the old
/// contents (OLD_SUFFIX) of a tablespace outside the data directory:
/// inside its location, which the server user owns, on its file system.
pub fn tablespace_sibling(location: &str, suffix: &str) -> String {
    format!("{}/{suffix}", location.trim_end_matches('/'))
}
pub const OLD_SUFFIX: &str = ".gp_recovery_old";
/// An old directory being deleted in the background: `OLD.removing.PID`.
pub const REMOVING_SUFFIX: &str = ".removing";
/// Marks the line the rewind step adds to a target's postgresql.auto.conf.
pub const REWIND_MARK: &str = "# gp_recovery: for pg_rewind only";
/// The line pg_rewind writes into the backup_label of a directory it
/// finished rewinding. Rewinding such a directory again would first
/// crash-recover it, writing a checkpoint on the source's timeline over WAL
/// the source does not have, and the segment would never stream; so a
/// finished rewind is started as it is.
pub const REWIND_LABEL_METHOD: &str = "BACKUP METHOD: pg_rewind";
/// The target's in-place tablespaces, set aside while pg_rewind runs (see
/// [`Scripts::rewind`]).
pub const TABLESPACES_SUFFIX: &str = ".gp_recovery_tblspc";
/// The target's own WAL, set aside while pg_rewind runs.
pub const WAL_SUFFIX: &str = ".gp_recovery_wal";
/// What [`Scripts::start`] prints when the segment runs already.
pub const ALREADY_RUNNING: &str = "the segment is already running";
/// What [`Scripts::allow_host`] and [`Scripts::forget_host`] print when they
/// changed pg_hba.conf.
pub const HBA_CHANGED: &str = "pg_hba.conf changed";

/// Whether a step printed `line` as a line of its own (the steps' outcomes
/// above, not a message's wording).
pub fn printed(output: &str, line: &str) -> bool {
    output.lines().any(|l| l == line)
}
/// The server log of a segment the recovery started, beside its directory.
pub const SERVER_LOG_SUFFIX: &str = ".gp_recovery.log";
/// Beside a data directory while a copy or rewind into it is incomplete:
/// written before the first change, removed only when the copy is whole.
/// A marked directory is never started, and never rewound.
pub const INCOMPLETE_SUFFIX: &str = ".gp_recovery_incomplete";
/// Ends each pg_hba.conf line gp_recovery added for a host, followed by
/// the host's name.
pub const HBA_MARK: &str = "# gp_recovery: for host ";

/// The pg_hba.conf address field for a host: its address as a one-host
/// network, or its name (gp_recovery.hba_hostnames, as gprecoverseg
/// --hba-hostnames).
pub fn hba_entry(address: &str, hostname: &str, by_name: bool) -> String {
    match address.parse::<std::net::IpAddr>() {
        _ if by_name => hostname.to_string(),
        Ok(std::net::IpAddr::V4(a)) => format!("{a}/32"),
        Ok(std::net::IpAddr::V6(a)) => format!("{a}/128"),
        Err(_) => address.to_string(),
    }
}

/// The exit code of a step refused because the directory is marked.
pub const MARKED_INCOMPLETE: i32 = 4;

impl Scripts {
    /// Settings every step runs with, D = the data directory, I its
    /// incomplete mark, C its claim, N and O a full copy's new and old
    /// directories beside it, NEW and OLD their names inside a tablespace
    /// location; the job, segment and pair (JOB, DBID, SYS); the
    /// coordinator (CM, CC, CS); and the functions of [`SHELL_LIB`].
    fn preamble(&self, datadir: &str) -> String {
        let c = &self.coordinator;
        let chain: Vec<String> = c.datadir.chain.iter().map(ToString::to_string).collect();
        format!(
            "LC_ALL=C PGAPPNAME=gp_recovery PGCONNECT_TIMEOUT={} B={} D={} I={} C={}\n\
             N={} O={} NEW={} OLD={} K={}\n\
             JOB={} DBID={} SYS={} CM={} CC={} CS={}\n\
             export LC_ALL PGAPPNAME PGCONNECT_TIMEOUT\n{SHELL_LIB}",
            self.connect_timeout,
            quote(&self.bindir),
            quote(datadir.trim_end_matches('/')),
            quote(&sibling(datadir, INCOMPLETE_SUFFIX)),
            quote(&sibling(datadir, CLAIM_SUFFIX)),
            quote(&sibling(datadir, NEW_SUFFIX)),
            quote(&sibling(datadir, OLD_SUFFIX)),
            quote(NEW_SUFFIX),
            quote(OLD_SUFFIX),
            quote(DISCARD_MARK),
            self.owner.job,
            self.owner.dbid,
            quote(&self.owner.system_identifier),
            quote(&c.machine),
            quote(&chain.join(" ")),
            quote(self.guarded_system_identifier()),
        )
    }

    /// The database system no step touches: the coordinator's, except in a
    /// job for its standby, which holds that system by design (the
    /// coordinator's directory is still refused by device and inode, and a
    /// server is stopped only when it runs in the job's directory).
    fn guarded_system_identifier(&self) -> &str {
        let c = &self.coordinator.system_identifier;
        if *c == self.owner.system_identifier {
            ""
        } else {
            c
        }
    }

    /// The preamble of a step that changes files or processes: it refuses
    /// at once when D, N or O is the coordinator's data directory, lies
    /// inside it or holds it (on the coordinator's machine, by device and
    /// inode), or when D holds the coordinator's database system; and it
    /// defines `member` (refuses unless the server running in D is the
    /// pair's, started as D) and the claim functions: `claimed` (the
    /// claim's line), `owned` (this job's), `reclaimable` (this segment's,
    /// by this or an ended job) and `claim DEV:INO`.
    fn acting(&self, datadir: &str) -> String {
        self.preamble(datadir)
            + "sysid() { \"$B/pg_controldata\" -D \"$1\" 2>/dev/null | sed -n 's/^Database system identifier: *//p'; }\n\
               on_coordinator() { k=$(chain \"$1\"); ids=\" ${k#* } \"; c0=${CC%% *}\n\
               case \"$ids\" in *\" $c0 \"*) return 0;; esac\n\
               if [ \"${k%% *}\" = 1 ]; then self=${k#* }; self=${self%% *}; case \" $CC \" in *\" $self \"*) return 0;; esac; fi\n\
               return 1; }\n\
               if [ -n \"$CC\" ] && [ \"$(machine)\" = \"$CM\" ]; then for p in \"$D\" \"$N\" \"$O\"; do\n\
               if on_coordinator \"$p\"; then refuse \"$p is, lies inside or holds the coordinator's data directory: no step touches it\"; fi\n\
               done; fi\n\
               if [ -n \"$CS\" ] && [ -f \"$D/global/pg_control\" ] && [ \"$(sysid \"$D\")\" = \"$CS\" ]; then\n\
               refuse \"$D holds the coordinator's database system (identifier $CS): no step touches it\"; fi\n\
               member() { [ -n \"$SYS\" ] || refuse \"no database system identifier is recorded for this pair: not stopping the server in $D\"\n\
               s=$(sysid \"$D\"); [ \"$s\" = \"$SYS\" ] || refuse \"the server running in $D has database system identifier ${s:-unknown}, not the pair's $SYS: not stopping it\"\n\
               p=; if [ -f \"$D/postmaster.pid\" ]; then p=$(sed -n 2p \"$D/postmaster.pid\"); fi\n\
               [ \"$p\" = \"$D\" ] || refuse \"the server running in $D was started in ${p:-an unknown directory}, not in $D: not stopping it\"; }\n\
               claimed() { l=; if [ -f \"$C\" ]; then read -r l < \"$C\"; fi; echo \"$l\"; }\n\
               owned() { case \"$(claimed)\" in \"job $JOB dbid $DBID \"*) return 0;; esac; return 1; }\n\
               reclaimable() { case \"$(claimed)\" in \"job \"*\" dbid $DBID \"*) return 0;; esac; return 1; }\n\
               claim() { printf 'job %s dbid %s dir %s\\n' \"$JOB\" \"$DBID\" \"$1\" > \"$C.tmp\" && mv -f \"$C.tmp\" \"$C\"; }\n"
    }

    /// Prints this host's machine line and, for each path, `dir I E
    /// DEV:INO...` and a `tblspc I E DEV:INO...` line for each link in its
    /// pg_tblspc (see [`crate::identity::HostReport`]); with `limits`, also
    /// PATH_MAX and NAME_MAX where the first path would be.
    pub fn identify(&self, paths: &[String], limits: bool) -> String {
        let mut s = format!("LC_ALL=C\nexport LC_ALL\n{SHELL_LIB}echo \"machine $(machine)\"\n");
        for (i, p) in paths.iter().enumerate() {
            s += &format!(
                "p={}\necho \"dir {i} $(chain \"$p\")\"\n\
                 for l in \"$p\"/pg_tblspc/*; do if [ -L \"$l\" ]; then echo \"tblspc {i} $(chain \"$l\")\"; fi; done\n",
                quote(p)
            );
        }
        if let (true, Some(first)) = (limits, paths.first()) {
            s += &format!(
                "P=$(realpath -m -- {}); while [ ! -d \"$P\" ]; do P=${{P%/*}}; [ -n \"$P\" ] || P=/; done\n\
                 echo \"limits $(getconf PATH_MAX \"$P\") $(getconf NAME_MAX \"$P\")\"\n",
                quote(first)
            );
        }
        s
    }

    /// Refuses to go on when the directory holds an incomplete copy.
    fn refuse_marked(what: &str) -> String {
        format!(
            "if [ -e \"$I\" ]; then echo \"the data directory $D holds an incomplete copy (an interrupted differential \
             recovery, rewind or relocation; $I exists): not {what} it\" >&2; exit {MARKED_INCOMPLETE}; fi\n"
        )
    }

    /// Can this host run the steps? Run first, before the catalog changes.
    pub fn check(&self, datadir: &str) -> String {
        self.preamble(datadir)
            + "[ -x \"$B/pg_ctl\" ] || { echo \"PostgreSQL programs are not installed in $B on $(hostname)\" >&2; exit 1; }"
    }

    /// Stops the segment (fast) if it runs; fails if it still runs after, or
    /// with `must_run` if it did not run. A running server is stopped only
    /// when it is the pair's (its system identifier) and was started in D
    /// (postmaster.pid); otherwise the step refuses and it keeps running.
    pub fn stop(&self, datadir: &str, must_run: bool) -> String {
        let not_running =
            if must_run { "{ echo \"the segment in $D is not running\" >&2; exit 3; }" } else { "exit 0" };
        self.acting(datadir)
            + &format!(
                "\"$B/pg_ctl\" status -D \"$D\" >/dev/null 2>&1 || {not_running}\n\
                 member\n\
                 \"$B/pg_ctl\" stop -D \"$D\" -m fast -w -t 60\n\
                 if \"$B/pg_ctl\" status -D \"$D\" >/dev/null 2>&1; then echo \"could not stop the segment in $D\" >&2; exit 1; fi"
            )
    }

    /// pg_controldata's report of a stopped segment.
    pub fn controldata(&self, datadir: &str) -> String {
        self.preamble(datadir) + "exec \"$B/pg_controldata\" -D \"$D\""
    }

    /// pg_rewind against the source; a mirror that merely stopped (it still
    /// has standby.signal) is left to catch up by streaming when
    /// `skip_standby`, as gprecoverseg does. A directory marked incomplete
    /// is refused. The mark is set before pg_rewind runs and removed when it
    /// succeeded, or failed before it began to copy ("need to copy"). A
    /// directory pg_rewind already finished (a crash came before its start)
    /// is left as it is, to be started.
    ///
    /// pg_rewind and then the rewound standby read the target's WAL from its
    /// last checkpoint before the divergence. A killed target is first
    /// crash-recovered by pg_rewind, whose checkpoint removes that WAL, and
    /// pg_rewind removes what the source lacks (Greenplum patched its server
    /// for this; vanilla clusters used to need a large wal_keep_size, whose
    /// kept WAL PostgreSQL 15's pg_rewind copies in full every time). So the
    /// script first copies the target's WAL from its latest checkpoint's
    /// REDO file aside, lets pg_rewind fetch from there
    /// (--restore-target-wal, with a restore_command line in
    /// postgresql.auto.conf for this run only: pg_rewind replaces the file
    /// with the source's, a failed run removes the line), and afterwards
    /// puts back what pg_wal lacks.
    ///
    /// An in-place tablespace (a directory in pg_tblspc) is listed by a
    /// running source as a link, and pg_rewind stops on a directory in the
    /// target: while it runs, each such directory moves beside the data
    /// directory with a link in its place, and moves back after.
    pub fn rewind(&self, datadir: &str, source_conninfo: &str, skip_standby: bool) -> String {
        let skip = if skip_standby {
            "if [ -f \"$D/standby.signal\" ]; then echo \"skipping pg_rewind on mirror as standby.signal is present\"; exit 0; fi\n"
        } else {
            ""
        };
        let saved = sibling(datadir, WAL_SUFFIX);
        // restore_command expands %f and %p, so a literal % is doubled; the
        // data directory has no " $ ` or \ (registration refuses them), so
        // double quotes keep it one word in restore_command's shell.
        let restore = format!("cp \"{}/%f\" \"%p\"", saved.replace('%', "%%"));
        let line = format!("restore_command = '{}' {REWIND_MARK}", restore.replace('\'', "''"));
        self.acting(datadir)
            + &Self::refuse_marked("rewinding")
            + skip
            + &format!(
                "if [ -f \"$D/backup_label\" ] && grep -q {method} \"$D/backup_label\"; then \
                 echo \"pg_rewind already finished in $D (its backup_label is there): starting it as it is\"; exit 0; fi\n",
                method = quote(REWIND_LABEL_METHOD)
            )
            + &format!(
                "A=\"$D/postgresql.auto.conf\" M={mark} W={w} T={t}\n\
                 F=$(\"$B/pg_controldata\" -D \"$D\" | sed -n \"s/^Latest checkpoint's REDO WAL file: *//p\")\n\
                 rm -rf \"$W\" && mkdir -p \"$W\" || exit 1\n\
                 for f in \"$D\"/pg_wal/*; do\n\
                 n=${{f##*/}}\n\
                 if [ -f \"$f\" ] && [ ${{#n}} -eq 24 ] && [ -n \"$F\" ] && [ ! \"$n\" \\< \"$F\" ]; then cp \"$f\" \"$W/\" || exit 1; fi\n\
                 done\n\
                 printf '%s\\n' {line} >> \"$A\" || exit 1\n\
                 : > \"$I\" || exit 1\n\
                 for t in \"$D\"/pg_tblspc/*; do\n\
                 if [ -d \"$t\" ] && [ ! -L \"$t\" ]; then mkdir -p \"$T\" && mv \"$t\" \"$T/\" && ln -s \"$T/${{t##*/}}\" \"$t\" || exit 1; fi\n\
                 done\n\
                 {{ \"$B/pg_rewind\" --target-pgdata=\"$D\" --source-server={conninfo} --restore-target-wal --progress 2>&1; echo $? > \"$W/rc\"; }} | tee \"$W/out\"\n\
                 rc=$(cat \"$W/rc\" 2>/dev/null || echo 1)\n\
                 for t in \"$T\"/*; do\n\
                 if [ -d \"$t\" ]; then l=\"$D/pg_tblspc/${{t##*/}}\"; rm -f \"$l\" && mv \"$t\" \"$l\" || exit 1; fi\n\
                 done\n\
                 rm -rf \"$T\"\n\
                 if [ \"$rc\" -ne 0 ] && ! grep -q \"need to copy\" \"$W/out\"; then rm -f \"$I\"; fi\n\
                 if [ -f \"$A\" ] && grep -q -F \"$M\" \"$A\"; then\n\
                 {{ grep -v -F \"$M\" \"$A\" || true; }} > \"$A.tmp\" && mv \"$A.tmp\" \"$A\"\n\
                 fi\n\
                 if [ \"$rc\" -eq 0 ]; then\n\
                 rm -f \"$W/rc\" \"$W/out\"\n\
                 for f in \"$W\"/*; do\n\
                 if [ -f \"$f\" ] && [ ! -e \"$D/pg_wal/${{f##*/}}\" ]; then mv \"$f\" \"$D/pg_wal/\" || exit 1; fi\n\
                 done\n\
                 rm -f \"$I\"\n\
                 fi\n\
                 rm -rf \"$W\"\n\
                 exit \"$rc\"",
                mark = quote(REWIND_MARK),
                w = quote(&saved),
                t = quote(&sibling(datadir, TABLESPACES_SUFFIX)),
                line = quote(&line),
                conninfo = quote(source_conninfo),
            )
    }

    /// pg_basebackup into a new directory beside the target (`args` without
    /// -D), which a complete copy later replaces. A relocation copies
    /// straight into its target, which must be missing or empty (an empty
    /// directory, perhaps a mount point, is used as it is), marked
    /// incomplete until the copy is whole.
    ///
    /// In place, each tablespace outside the data directory (`tablespaces`,
    /// the source's locations, which are the target's too) is copied into
    /// `LOCATION/.gp_recovery_new`, beside the directory the old segment
    /// keeps using until the swap.
    pub fn basebackup(&self, datadir: &str, relocate: bool, args: &[String], tablespaces: &[String]) -> String {
        let args = args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
        let mut s = self.acting(datadir);
        if relocate {
            // The claim records the directory by device and inode: a
            // backout empties only that directory, and only for this job.
            return s
                + "if [ -d \"$D\" ] && [ -n \"$(ls -A \"$D\")\" ]; then echo \"the new data directory $D exists and is not empty\" >&2; exit 1; fi\n\
                   if [ -e \"$C\" ] && ! reclaimable; then refuse \"$C says $D is another segment's ($(claimed)): not copying into it\"; fi\n\
                   mkdir -p \"$D\" && chmod 700 \"$D\" || exit 1\n\
                   claim \"$(stat -L -c %d:%i -- \"$D\")\" && : > \"$I\" || exit 1\n\
                   \"$B/pg_basebackup\" -D \"$D\" "
                + &args
                + " || exit $?\nrm -f \"$I\"";
        }
        // What an earlier job of this segment left beside it is stale: that
        // job either succeeded or was backed out. Anything there that no
        // job of this segment claims is left alone, and the copy refused.
        let mut leftovers = vec!["\"$N\"".to_string(), "\"$O\"".to_string()];
        let mut mapping = String::new();
        for location in tablespaces {
            let (new, old) = (tablespace_sibling(location, NEW_SUFFIX), tablespace_sibling(location, OLD_SUFFIX));
            leftovers.extend([quote(&new), quote(&old)]);
            // pg_basebackup reads '=' as the separator unless escaped.
            let escape = |p: &str| p.replace('=', "\\=");
            mapping += &format!(" -T {}", quote(&format!("{}={}", escape(location), escape(&new))));
        }
        let leftovers = leftovers.join(" ");
        s += &format!(
            "for x in {leftovers}; do if [ -e \"$x\" ] && ! reclaimable; then\n\
             refuse \"$x is there and no job of dbid $DBID claims it ($C: $(claimed)): not removing it\"; fi; done\n\
             rm -rf {leftovers} || exit 1\n\
             claim - || exit 1\n"
        );
        s + "mkdir -p \"$(dirname \"$N\")\" || exit 1\nexec \"$B/pg_basebackup\" -D \"$N\" " + &args + &mapping
    }

    /// Puts a finished copy in place, the old directory moved aside until
    /// the job succeeds; so are the copy's tablespaces outside the data
    /// directory (its links into `LOCATION/.gp_recovery_new`), each old one
    /// into `LOCATION/.gp_recovery_old`, with the link pointed back at
    /// LOCATION. Safe to run again after a crash half-way: it goes on from
    /// what it finds. The complete copy clears an incomplete mark.
    pub fn swap_in(&self, datadir: &str) -> String {
        self.acting(datadir)
            + "owned || refuse \"the copy $N is not this job's ($C: $(claimed)): not swapping it in\"\n\
               if [ -d \"$N\" ]; then\n\
               for l in \"$N\"/pg_tblspc/*; do\n\
               [ -L \"$l\" ] || continue\n\
               t=$(readlink \"$l\"); case \"$t\" in */\"$NEW\") ;; *) continue;; esac\n\
               loc=${t%/*}\n\
               for v in \"$t\"/*; do\n\
               [ -e \"$v\" ] || continue\n\
               if [ -e \"$loc/${v##*/}\" ]; then mkdir -p \"$loc/$OLD\" && mv \"$loc/${v##*/}\" \"$loc/$OLD/\" || exit 1; fi\n\
               mv \"$v\" \"$loc/\" || exit 1\n\
               done\n\
               rm -rf \"$t\" && ln -sfn \"$loc\" \"$l\" || exit 1\n\
               done\n\
               if [ -e \"$D\" ]; then mv \"$D\" \"$O\" || exit 1; fi\n\
               mv \"$N\" \"$D\" || exit 1\n\
               elif [ ! -d \"$O\" ] || [ ! -d \"$D\" ]; then echo \"the copy $N is gone\" >&2; exit 1; fi\n\
               rm -f \"$I\""
    }

    /// Puts the directory back as it was before a failed full recovery,
    /// from what is there: the old directory if it was moved aside (in
    /// place) and the old tablespace directories with it, the copy's
    /// removed; a relocation's target emptied if this job's copy began in
    /// it (the directory itself stays). Only what this job's claim covers
    /// is touched: anything else found there is left as it is, and the step
    /// refuses, naming it.
    pub fn back_out_copy(&self, datadir: &str, relocate: bool) -> String {
        let s = self.acting(datadir);
        if relocate {
            return s
                + "if owned; then\n\
                   if [ -e \"$D\" ]; then\n\
                   w=$(claimed); w=${w##* dir }; h=$(stat -L -c %d:%i -- \"$D\")\n\
                   [ \"$h\" = \"$w\" ] || refuse \"$D is not the directory this job made (device:inode $h, the claim says $w): left as it is\"\n\
                   find \"$D\" -mindepth 1 -delete || exit 1\n\
                   fi\n\
                   rm -f \"$I\" \"$C\"\n\
                   elif [ -d \"$D\" ] && [ -n \"$(ls -A \"$D\")\" ]; then\n\
                   refuse \"the new data directory $D is not this job's copy ($C: $(claimed)): left as it is\"\n\
                   fi";
        }
        s + "if ! owned; then\n\
             for x in \"$N\" \"$O\"; do if [ -e \"$x\" ]; then refuse \"$x is not this job's ($C: $(claimed)): left as it is\"; fi; done\n\
             exit 0\n\
             fi\n\
             for l in \"$N\"/pg_tblspc/* \"$D\"/pg_tblspc/* \"$O\"/pg_tblspc/*; do\n\
             [ -L \"$l\" ] || continue\n\
             t=$(readlink \"$l\"); case \"$t\" in /*) ;; *) continue;; esac\n\
             loc=${t%/\"$NEW\"}\n\
             if [ -d \"$loc/$OLD\" ]; then\n\
             for v in \"$loc/$OLD\"/*; do\n\
             [ -e \"$v\" ] || continue\n\
             rm -rf \"$loc/${v##*/}\" && mv \"$v\" \"$loc/\" || exit 1\n\
             done\n\
             rmdir \"$loc/$OLD\" || exit 1\n\
             fi\n\
             rm -rf \"$loc/$NEW\" || exit 1\n\
             done\n\
             if [ -d \"$O\" ]; then rm -rf \"$D\" && mv \"$O\" \"$D\" || exit 1; fi\nrm -rf \"$N\" && rm -f \"$C\""
    }

    /// Once the recovered segment is synchronized: removes the old directory
    /// and old tablespace directories (in place) and the job's claim (a
    /// relocation's new directory is then the segment's). Each old
    /// directory gets the discard mark, is renamed at once and deleted in
    /// the background, in a session of its own: the segment is recovered,
    /// and freeing a large directory's space takes seconds on a slow disk.
    /// Leftovers of a deletion cut short (a crash) go the same way, but only
    /// those holding the discard mark.
    pub fn remove_old(&self, datadir: &str) -> String {
        self.acting(datadir)
            + &format!(
                "owned || refuse \"the old directories beside $D are not this job's ($C: $(claimed)): left as they are\"\n\
                 X={removing}\n\
                 gone() {{ if [ -e \"$1\" ]; then : > \"$1/$K\" && mv \"$1\" \"$1$X.$JOB\" || exit 1; fi\n\
                 for g in \"$1$X\".*; do if [ -f \"$g/$K\" ]; then setsid rm -rf -- \"$g\" </dev/null >/dev/null 2>&1 & fi; done; }}\n\
                 for l in \"$D\"/pg_tblspc/*; do\n\
                 [ -L \"$l\" ] || continue\n\
                 t=$(readlink \"$l\"); case \"$t\" in /*) gone \"$t/$OLD\";; esac\n\
                 done\n\
                 gone \"$O\"\n\
                 rm -f \"$C\"",
                removing = quote(REMOVING_SUFFIX)
            )
    }

    /// The free space for a copy into the data directory, on the target's
    /// host: `space AVAIL_KB USED_KB MARKED PATH` (see
    /// [`crate::recovery::Space`]). PATH is the directory whose file system
    /// the copy fills: the parent for a copy made beside the directory (in
    /// place), else the directory or its nearest existing ancestor; USED_KB
    /// is what the directory holds now with `measure` (only a differential
    /// copy, which rewrites it in place, needs it: du reads every file), else
    /// 0; MARKED is 1 when it holds an incomplete copy.
    pub fn space(&self, datadir: &str, beside: bool, measure: bool) -> String {
        let start = if beside { "P=$(dirname \"$D\")" } else { "P=\"$D\"" };
        let used = if measure {
            "U=0; if [ -d \"$D\" ]; then U=$(du -sk \"$D\" 2>/dev/null | cut -f1); fi\n"
        } else {
            "U=0\n"
        };
        self.preamble(datadir)
            + start
            + "\nwhile [ ! -d \"$P\" ]; do P=$(dirname \"$P\"); done\n\
               A=$(df -Pk \"$P\" | awk 'NR == 2 { print $4 }')\n"
            + used
            + "[ -n \"$A\" ] || { echo \"could not read the free space of $P\" >&2; exit 1; }\n\
               M=0; if [ -e \"$I\" ]; then M=1; fi\n\
               echo \"space $A ${U:-0} $M $P\""
    }

    /// Lets a host connect and replicate as `user` (`entry`: its address
    /// or name, see [`hba_entry`]): the two lines go at the end of the
    /// segment's pg_hba.conf (`hba_file`) unless there, marked for the
    /// host, and the segment reloads. Prints [`HBA_CHANGED`] when it added them.
    pub fn allow_host(&self, datadir: &str, hba_file: &str, user: &str, entry: &str, host: &str) -> String {
        let mark = format!("{HBA_MARK}{host}");
        let line = |db: &str| quote(&format!("host {db} {user} {entry} trust {mark}"));
        self.preamble(datadir)
            + &format!(
                "H={} L1={} L2={} OK={}\n",
                quote(hba_file),
                line("all"),
                line("replication"),
                quote(HBA_CHANGED)
            )
            + "C=0\n\
               for l in \"$L1\" \"$L2\"; do\n\
               if ! grep -qxF -- \"$l\" \"$H\"; then printf '%s\\n' \"$l\" >> \"$H\" || exit 1; C=1; fi\n\
               done\n\
               if [ $C -eq 0 ]; then echo 'pg_hba.conf already lets it in'; exit 0; fi\n\
               \"$B/pg_ctl\" reload -D \"$D\" >/dev/null || exit 1\n\
               echo \"$OK\""
    }

    /// Removes the lines [`Scripts::allow_host`] added for `host` (and no
    /// other line) and reloads. Prints [`HBA_CHANGED`] when it removed them.
    pub fn forget_host(&self, datadir: &str, hba_file: &str, host: &str) -> String {
        self.preamble(datadir)
            + &format!("H={} M={} OK={}\n", quote(hba_file), quote(&format!(" {HBA_MARK}{host}")), quote(HBA_CHANGED))
            + "mine() { awk -v m=\"$M\" -v keep=\"$1\" '{ n = length($0) - length(m); \
               mine = n >= 0 && substr($0, n + 1) == m; if (mine == keep) print }' \"$H\"; }\n\
               if [ -z \"$(mine 1)\" ]; then echo 'pg_hba.conf has no line for it'; exit 0; fi\n\
               mine 0 > \"$H.gp_recovery\" && cat \"$H.gp_recovery\" > \"$H\" && rm -f \"$H.gp_recovery\" || exit 1\n\
               \"$B/pg_ctl\" reload -D \"$D\" >/dev/null || exit 1\n\
               echo \"$OK\""
    }

    /// The end of the server log of a segment the recovery started.
    pub fn server_log_tail(&self, datadir: &str) -> String {
        self.preamble(datadir)
            + &format!(
                "L={}\nif [ -f \"$L\" ]; then tail -c 16384 \"$L\"; fi",
                quote(&sibling(datadir, SERVER_LOG_SUFFIX))
            )
    }

    /// rsync of the source's data directory over the target's; `source_host`
    /// is None when both are on one host, else rsync reaches it through
    /// `remote_shell`. `args` are rsync's options. Then each tablespace
    /// outside the data directory (a link in pg_tblspc to an absolute path
    /// elsewhere, as the source has it) is copied the same way into the
    /// same location on the target's host: a mirror's own tablespaces are
    /// at its primary's locations (the caller makes sure the hosts differ).
    pub fn rsync(
        &self,
        datadir: &str,
        source_dir: &str,
        source_host: Option<&str>,
        remote_shell: &str,
        args: &[String],
    ) -> String {
        let source = format!("{}/", source_dir.trim_end_matches('/'));
        let mut words: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let prefix = match source_host {
            None => String::new(),
            Some(host) => {
                words.push(quote(&format!("--rsh={remote_shell}")));
                format!("{host}:")
            }
        };
        let rsync = words.join(" ");
        // Marked incomplete until the backup label is in place.
        self.acting(datadir)
            + &format!(
                "P={prefix}\n: > \"$I\" || exit 1\n\
                 rsync {rsync} {source} \"$D/\" || exit $?\n\
                 for l in \"$D\"/pg_tblspc/*; do\n\
                 [ -L \"$l\" ] || continue\n\
                 t=$(readlink \"$l\"); case \"$t\" in /*) ;; *) continue;; esac\n\
                 case \"$t/\" in \"$D\"/*) continue;; esac\n\
                 mkdir -p \"$t\" || exit 1\n\
                 rsync {rsync} \"$P$t/\" \"$t/\" || exit $?\n\
                 done",
                prefix = quote(&prefix),
                source = quote(&format!("{prefix}{source}")),
            )
    }

    /// After a differential copy: the backup label and tablespace map from
    /// pg_backup_stop, no WAL of the old timeline left to replay, and the
    /// incomplete mark removed: the copy is whole.
    pub fn install_backup_label(&self, datadir: &str, label: &str, map: &str) -> String {
        let mut s = self.acting(datadir) + &format!("printf '%s' {} > \"$D/backup_label\" || exit 1\n", quote(label));
        if !map.is_empty() {
            s += &format!("printf '%s' {} > \"$D/tablespace_map\" || exit 1\n", quote(map));
        }
        s + "for f in \"$D\"/pg_wal/*; do if [ -f \"$f\" ]; then rm -f \"$f\" || exit 1; fi; done\n\
             rm -f \"$I\""
    }

    /// The segment's postgresql.auto.conf, to be rewritten by the caller.
    pub fn read_auto_conf(&self, datadir: &str) -> String {
        self.preamble(datadir) + "if [ -f \"$D/postgresql.auto.conf\" ]; then cat \"$D/postgresql.auto.conf\"; fi"
    }

    /// Writes postgresql.auto.conf (through a temporary file) and makes the
    /// segment a standby, without replication slots: one it kept from when
    /// it was a primary (pg_rewind leaves pg_replslot alone, and a
    /// backed-out rebalance leaves the demoted primary's) would hold WAL on
    /// the mirror forever.
    pub fn configure_standby(&self, datadir: &str, auto_conf: &str) -> String {
        self.acting(datadir)
            + &format!(
                "printf '%s' {} > \"$D/postgresql.auto.conf.tmp\" && mv \"$D/postgresql.auto.conf.tmp\" \"$D/postgresql.auto.conf\" \
                 && : > \"$D/standby.signal\" && rm -f \"$D/recovery.signal\" && rm -rf \"$D\"/pg_replslot/*",
                quote(auto_conf)
            )
    }

    /// pg_ctl start, waiting until it accepts connections; the server log
    /// goes beside the data directory. With `unless_running`, a segment
    /// that runs already is left alone. A directory marked incomplete is
    /// never started.
    pub fn start(&self, datadir: &str, unless_running: bool, wait_secs: u64) -> String {
        let mut s = self.acting(datadir)
            + &Self::refuse_marked("starting")
            + &format!("L={}\n", quote(&sibling(datadir, SERVER_LOG_SUFFIX)));
        if unless_running {
            s += &format!(
                "if \"$B/pg_ctl\" status -D \"$D\" >/dev/null 2>&1; then echo {}; exit 0; fi\n",
                quote(ALREADY_RUNNING)
            );
        }
        // Not pg_ctl -w: a standby that can never become consistent (its
        // WAL is gone from the source) would hold the job for the whole
        // wait. The server's status line in postmaster.pid says when it is
        // ready, as pg_ctl reads it (a killed server's stale file goes
        // first, so that only the new server's status counts); a hopeless
        // line in the log, or the server's exit, ends the wait at once.
        let patterns: String = crate::job::HOPELESS_START.iter().map(|p| format!(" -e {}", quote(p))).collect();
        s + &format!(
            "S=0; if [ -f \"$L\" ]; then S=$(wc -c < \"$L\"); fi\n\
             if [ -f \"$D/postmaster.pid\" ] && ! \"$B/pg_ctl\" status -D \"$D\" >/dev/null 2>&1; then rm -f \"$D/postmaster.pid\"; fi\n\
             \"$B/pg_ctl\" start -D \"$D\" -l \"$L\" -W || exit $?\n\
             n=0\n\
             while [ $n -lt {ticks} ]; do\n\
             case \"$(sed -n 8p \"$D/postmaster.pid\" 2>/dev/null)\" in ready*|standby*) echo \"server started\"; exit 0;; esac\n\
             H=$(tail -c +$((S + 1)) \"$L\" 2>/dev/null | grep -F{patterns} | tail -n 1)\n\
             if [ -n \"$H\" ]; then echo \"the segment cannot start as a standby: $H\" >&2; exit 5; fi\n\
             if [ $n -ge 40 ] && ! \"$B/pg_ctl\" status -D \"$D\" >/dev/null 2>&1; then echo \"the server exited while starting\" >&2; exit 1; fi\n\
             sleep 0.05; n=$((n + 1))\n\
             done\n\
             echo \"the server did not start within {wait_secs} s\" >&2; exit 1",
            ticks = wait_secs * 20
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_rsync_may_end_with_vanished_files() {
        assert!(exit_ok("rsync", Some(0)));
        assert!(exit_ok("rsync", Some(RSYNC_VANISHED)));
        assert!(!exit_ok("pg_basebackup", Some(RSYNC_VANISHED)));
        assert!(!exit_ok("rsync", Some(23)));
        // Killed by a signal: no exit code.
        assert!(!exit_ok("rsync", None));
    }

    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn run_local(script: &str) -> (i32, String) {
        let argv = command_line(None, script);
        let out = output(Command::new(&argv[0]).args(&argv[1..])).expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpr-host-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn quoting_survives_a_shell() {
        for s in ["plain", "a space", "it's", "semi;colon", "$HOME `id` \"x\" \\", "", "new\nline", "'"] {
            let (rc, out) = run_local(&format!("printf '%s' {}", quote(s)));
            assert_eq!((rc, out.as_str()), (0, s));
        }
        assert_eq!(quote("/data/gpseg0"), "/data/gpseg0");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn remote_shell_setting_splits_like_a_shell() {
        assert_eq!(split_words(default_shell()).unwrap(), ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
        assert_eq!(
            split_words("ssh -i '/keys/my key' -o \"X=a b\" a\\ b").unwrap(),
            ["ssh", "-i", "/keys/my key", "-o", "X=a b", "a b"]
        );
        assert!(split_words("ssh -i 'open").unwrap_err().to_string().contains("closing single quote"));
        assert!(split_words("  ").is_err());
    }

    #[test]
    fn local_hosts() {
        assert!(is_local("localhost", "sdw1", ""));
        assert!(is_local("127.0.0.1", "sdw1", ""));
        assert!(is_local("SDW1", "sdw1", ""));
        assert!(is_local("cdw.example", "sdw1", "a, cdw.example"));
        assert!(!is_local("127.0.0.2", "sdw1", ""));
        assert!(!is_local("sdw2", "sdw1", "sdw3,"));
    }

    #[test]
    fn remote_command_line_is_the_shell_then_host_then_one_script() {
        let words = split_words(default_shell()).unwrap();
        let argv = command_line(Some((&words, "sdw2")), "echo hi");
        assert_eq!(&argv[..7], ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--", "sdw2"]);
        assert_eq!(argv.len(), 8);
        assert!(argv[7].contains("setsid sh -c 'echo hi'"));
        let other = vec!["my-shell".to_string()];
        assert_eq!(&command_line(Some((&other, "sdw2")), "echo hi")[..2], ["my-shell", "sdw2"]);
    }

    #[test]
    fn exit_code_and_output_come_back() {
        assert_eq!(run_local("echo out; echo err >&2; exit 7"), (7, "out\nerr\n".into()));
    }

    #[test]
    fn closing_stdin_ends_what_the_script_started() {
        let dir = scratch("cancel");
        let marker = dir.join("survived");
        let argv = command_line(None, &format!("sleep 3; touch {}", quote(&marker.to_string_lossy())));
        let mut child = Command::new(&argv[0]).args(&argv[1..]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(!status.success());
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert!(!marker.exists(), "the script was ended with its session");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreachable_names_the_host_and_ssh_reason() {
        assert_eq!(
            unreachable("sdw2", "ssh: connect to host sdw2 port 22: Connection refused\r\n"),
            "host sdw2 is unreachable: ssh: connect to host sdw2 port 22: Connection refused"
        );
        assert_eq!(unreachable("sdw2", ""), "host sdw2 is unreachable");
    }

    fn default_shell() -> &'static str {
        DEFAULT_REMOTE_SHELL.to_str().unwrap()
    }

    fn scripts() -> Scripts {
        Scripts {
            bindir: "/usr/lib/postgresql/15/bin".into(),
            connect_timeout: 5,
            owner: owner(7),
            ..Default::default()
        }
    }

    fn owner(job: i64) -> Owner {
        Owner { job, dbid: 3, system_identifier: "42".into() }
    }

    /// The claim job `job` of dbid 3 leaves beside `ds`.
    fn claim(ds: &str, job: i64, dir: &str) {
        std::fs::write(sibling(ds, CLAIM_SUFFIX), format!("job {job} dbid 3 dir {dir}\n")).unwrap();
    }

    fn dev_ino(path: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    }

    /// A bin directory of fake programs: each records its arguments in
    /// `calls` and runs the given body.
    fn fake_bin(dir: &Path, programs: &[(&str, &str)]) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in programs {
            let text = format!("#!/bin/sh\necho \"{name} $*\" >> {}/calls\n{body}\n", dir.display());
            std::fs::write(bin.join(name), text).unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin.to_string_lossy().into_owned()
    }

    #[test]
    fn full_copy_swaps_in_and_backs_out_with_odd_names() {
        let dir = scratch("swap");
        let d = dir.join("seg 'x';y");
        let ds = d.to_string_lossy().into_owned();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("PG_VERSION"), "old").unwrap();
        let new = PathBuf::from(sibling(&ds, NEW_SUFFIX));
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("PG_VERSION"), "new").unwrap();
        let s = scripts();
        let (rc, out) = run_local(&s.swap_in(&ds));
        assert_eq!(rc, REFUSED, "no claim, no swap: {out}");
        assert_eq!(std::fs::read_to_string(d.join("PG_VERSION")).unwrap(), "old");
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0);
        assert_eq!(std::fs::read_to_string(d.join("PG_VERSION")).unwrap(), "new");
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0, "a swap run again after a crash goes on");
        assert_eq!(std::fs::read_to_string(d.join("PG_VERSION")).unwrap(), "new");
        assert_eq!(run_local(&s.back_out_copy(&ds, false)).0, 0);
        assert_eq!(std::fs::read_to_string(d.join("PG_VERSION")).unwrap(), "old");
        assert!(!new.exists() && !PathBuf::from(sibling(&ds, OLD_SUFFIX)).exists());
        assert!(!PathBuf::from(sibling(&ds, CLAIM_SUFFIX)).exists(), "a whole backout drops the claim");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_swap_interrupted_between_its_moves_is_finished_or_backed_out() {
        let dir = scratch("halfswap");
        let ds = dir.join("seg").to_string_lossy().into_owned();
        let (old, new) = (PathBuf::from(sibling(&ds, OLD_SUFFIX)), PathBuf::from(sibling(&ds, NEW_SUFFIX)));
        let half_way = || {
            let _ = std::fs::remove_dir_all(&ds);
            std::fs::create_dir_all(&old).unwrap();
            std::fs::write(old.join("PG_VERSION"), "old").unwrap();
            std::fs::create_dir_all(&new).unwrap();
            std::fs::write(new.join("PG_VERSION"), "new").unwrap();
        };
        let s = scripts();
        half_way();
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0);
        assert_eq!(std::fs::read_to_string(PathBuf::from(&ds).join("PG_VERSION")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(old.join("PG_VERSION")).unwrap(), "old");
        let _ = std::fs::remove_dir_all(&old);
        half_way();
        // Another job's copy is never touched by this one's backout.
        claim(&ds, 6, "-");
        let (rc, out) = run_local(&s.back_out_copy(&ds, false));
        assert_eq!(rc, REFUSED, "{out}");
        assert!(out.contains("is not this job's") && old.exists() && new.exists(), "{out}");
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.back_out_copy(&ds, false)).0, 0);
        assert_eq!(std::fs::read_to_string(PathBuf::from(&ds).join("PG_VERSION")).unwrap(), "old");
        assert!(!new.exists() && !old.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_marked_directory_is_never_started_or_rewound() {
        let dir = scratch("marked");
        let ds = dir.join("seg").to_string_lossy().into_owned();
        std::fs::create_dir_all(&ds).unwrap();
        std::fs::write(PathBuf::from(&ds).join("standby.signal"), "").unwrap();
        std::fs::write(sibling(&ds, INCOMPLETE_SUFFIX), "").unwrap();
        let s = scripts();
        let (rc, out) = run_local(&s.start(&ds, false, 5));
        assert_eq!(rc, MARKED_INCOMPLETE, "{out}");
        assert!(out.contains("holds an incomplete copy") && out.contains("not starting it"), "{out}");
        let (rc, out) = run_local(&s.rewind(&ds, "host=x", true));
        assert_eq!(rc, MARKED_INCOMPLETE, "standby.signal does not skip the check: {out}");
        assert!(out.contains("not rewinding it"), "{out}");
        assert_eq!(run_local(&s.install_backup_label(&ds, "label", "")).0, 0);
        assert!(!PathBuf::from(sibling(&ds, INCOMPLETE_SUFFIX)).exists(), "a whole copy clears the mark");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_relocation_backout_empties_only_the_directory_this_job_made() {
        let dir = scratch("relocback");
        let ds = dir.join("mnt").to_string_lossy().into_owned();
        std::fs::create_dir_all(PathBuf::from(&ds).join("base")).unwrap();
        let s = scripts();
        let kept = |what: &str| {
            let (rc, out) = run_local(&s.back_out_copy(&ds, true));
            assert_eq!(rc, REFUSED, "{what}: {out}");
            assert!(PathBuf::from(&ds).join("base").exists(), "{what}: emptied");
            out
        };
        // No claim: this job never began a copy here, so nothing is removed.
        assert!(kept("no claim").contains("is not this job's copy"));
        std::fs::write(sibling(&ds, INCOMPLETE_SUFFIX), "").unwrap();
        kept("an incomplete mark alone proves nothing");
        claim(&ds, 6, &dev_ino(&ds));
        kept("another job's claim");
        claim(&ds, 7, "1:2");
        assert!(kept("another directory at that path").contains("not the directory this job made"));
        // This job's claim on this very directory: emptied, the directory kept.
        claim(&ds, 7, &dev_ino(&ds));
        assert_eq!(run_local(&s.back_out_copy(&ds, true)).0, 0);
        assert!(PathBuf::from(&ds).is_dir() && std::fs::read_dir(&ds).unwrap().next().is_none());
        assert!(!PathBuf::from(sibling(&ds, INCOMPLETE_SUFFIX)).exists());
        assert!(!PathBuf::from(sibling(&ds, CLAIM_SUFFIX)).exists());
        assert_eq!(run_local(&s.back_out_copy(&ds, true)).0, 0, "an empty directory needs nothing");
        // Once synchronized, the claim goes and the directory is the segment's.
        std::fs::create_dir_all(PathBuf::from(&ds).join("base")).unwrap();
        claim(&ds, 7, &dev_ino(&ds));
        assert_eq!(run_local(&s.remove_old(&ds)).0, 0);
        kept("a recovered segment's directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_finished_rewind_is_not_redone() {
        let dir = scratch("rewound");
        let ds = dir.to_string_lossy().into_owned();
        std::fs::write(dir.join("backup_label"), "START WAL LOCATION: 0/2\nBACKUP METHOD: pg_rewind\n").unwrap();
        // pg_rewind is not there: the script must not call it.
        let s = Scripts { bindir: "/nonexistent".into(), connect_timeout: 5, ..Default::default() };
        let (rc, out) = run_local(&s.rewind(&ds, "host=x", true));
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains("pg_rewind already finished"), "{out}");
        std::fs::write(dir.join("backup_label"), "START WAL LOCATION: 0/2\nBACKUP METHOD: streamed\n").unwrap();
        assert_ne!(run_local(&s.rewind(&ds, "host=x", true)).0, 0, "another backup's label is rewound");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relocation_refuses_a_non_empty_directory() {
        let dir = scratch("reloc");
        std::fs::write(dir.join("file"), "").unwrap();
        let ds = dir.to_string_lossy().into_owned();
        let (rc, out) = run_local(&scripts().basebackup(&ds, true, &[], &[]));
        assert_eq!(rc, 1);
        assert!(out.contains("exists and is not empty"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn standby_configuration_and_backup_label_are_written() {
        let dir = scratch("conf");
        let ds = dir.to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.join("pg_wal/archive_status")).unwrap();
        std::fs::write(dir.join("pg_wal/000000010000000000000001"), "wal").unwrap();
        std::fs::write(dir.join("recovery.signal"), "").unwrap();
        std::fs::create_dir_all(dir.join("pg_replslot/internal_wal_replication_slot")).unwrap();
        let s = scripts();
        let conf = "port = '7001'\nprimary_conninfo = 'host=a user=''b'''\n";
        assert_eq!(run_local(&s.configure_standby(&ds, conf)).0, 0);
        assert_eq!(run_local(&s.read_auto_conf(&ds)), (0, conf.to_string()));
        assert!(dir.join("standby.signal").exists() && !dir.join("recovery.signal").exists());
        assert!(dir.join("pg_replslot").is_dir(), "the directory stays");
        assert!(!dir.join("pg_replslot/internal_wal_replication_slot").exists(), "a mirror keeps no slot");
        assert_eq!(run_local(&s.install_backup_label(&ds, "START WAL LOCATION: 0/2\n", "")).0, 0);
        assert_eq!(std::fs::read_to_string(dir.join("backup_label")).unwrap(), "START WAL LOCATION: 0/2\n");
        assert!(!dir.join("pg_wal/000000010000000000000001").exists() && dir.join("pg_wal/archive_status").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rewind_leaves_postgresql_auto_conf_as_it_was() {
        let dir = scratch("rewind");
        let ds = dir.to_string_lossy().into_owned();
        std::fs::write(dir.join("postgresql.auto.conf"), "port = '7001'\n").unwrap();
        let s = Scripts { bindir: "/nonexistent".into(), connect_timeout: 5, ..Default::default() };
        let (rc, _) = run_local(&s.rewind(&ds, "host=x", false));
        assert_ne!(rc, 0);
        assert_eq!(std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap(), "port = '7001'\n");
        assert!(!PathBuf::from(sibling(&ds, WAL_SUFFIX)).exists(), "the WAL set aside is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_place_tablespaces_are_back_after_a_rewind() {
        let dir = scratch("tblspc");
        let ds = dir.to_string_lossy().into_owned();
        std::fs::create_dir_all(dir.join("pg_tblspc/16406/PG_15_1")).unwrap();
        std::fs::write(dir.join("pg_tblspc/16406/PG_15_1/x"), "data").unwrap();
        std::os::unix::fs::symlink("/elsewhere", dir.join("pg_tblspc/16500")).unwrap();
        // pg_rewind is a script that records what it saw, then fails.
        let bin = scratch("tblspc-bin");
        std::fs::write(
            bin.join("pg_rewind"),
            format!(
                "#!/bin/sh\n[ -L {ds}/pg_tblspc/16406 ] && cat {ds}/pg_tblspc/16406/PG_15_1/x > {ds}/seen\nexit 1\n"
            ),
        )
        .unwrap();
        std::fs::write(bin.join("pg_controldata"), "#!/bin/sh\n").unwrap();
        for f in ["pg_rewind", "pg_controldata"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let s = Scripts { bindir: bin.to_string_lossy().into_owned(), connect_timeout: 5, ..Default::default() };
        assert_eq!(run_local(&s.rewind(&ds, "host=x", false)).0, 1);
        assert_eq!(std::fs::read_to_string(dir.join("seen")).unwrap(), "data", "pg_rewind saw a link with the files");
        let t = dir.join("pg_tblspc/16406");
        assert!(t.is_dir() && !t.is_symlink(), "the directory is back");
        assert_eq!(std::fs::read_to_string(t.join("PG_15_1/x")).unwrap(), "data");
        assert!(dir.join("pg_tblspc/16500").is_symlink(), "a real link is left alone");
        assert!(!PathBuf::from(sibling(&ds, TABLESPACES_SUFFIX)).exists());
        std::fs::remove_dir_all(&bin).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rsync_reaches_another_host_through_the_remote_shell() {
        let s = scripts();
        let local = s.rsync("/t", "/s d", None, default_shell(), &["-a".into()]);
        assert!(local.contains("rsync -a '/s d/' \"$D/\""), "{local}");
        let remote = s.rsync("/t", "/s", Some("sdw1"), default_shell(), &["-a".into()]);
        let rsync = "rsync -a '--rsh=ssh -o BatchMode=yes -o ConnectTimeout=10'";
        assert!(remote.contains(&format!("{rsync} sdw1:/s/ \"$D/\"")), "{remote}");
        assert!(remote.contains(&format!("{rsync} \"$P$t/\" \"$t/\"")) && remote.contains("P=sdw1:\n"), "{remote}");
    }

    #[test]
    fn a_host_s_hba_lines_are_added_once_and_removed_alone() {
        assert_eq!(hba_entry("10.0.0.7", "sdw3", false), "10.0.0.7/32");
        assert_eq!(hba_entry("::1", "sdw3", false), "::1/128");
        assert_eq!(hba_entry("10.0.0.7", "sdw3", true), "sdw3");
        let dir = scratch("hba");
        let hba = dir.join("pg_hba.conf");
        let mine_before = "host all gpadmin 10.0.0.77/32 trust # gp_recovery: for host 10.0.0.77\n";
        std::fs::write(&hba, format!("local all all trust\n{mine_before}")).unwrap();
        // A fake pg_ctl that only records the reload.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("pg_ctl"), format!("#!/bin/sh\necho \"$1\" >> {}/reloads\n", dir.display())).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(bin.join("pg_ctl")).status().unwrap();
        let s = Scripts { bindir: bin.to_string_lossy().into_owned(), connect_timeout: 5, ..Default::default() };
        let (d, h) = (dir.to_string_lossy().into_owned(), hba.to_string_lossy().into_owned());
        let allow = s.allow_host(&d, &h, "gpadmin", "10.0.0.7/32", "10.0.0.7");
        assert!(printed(&run_local(&allow).1, HBA_CHANGED));
        assert!(!printed(&run_local(&allow).1, HBA_CHANGED), "added once");
        let text = std::fs::read_to_string(&hba).unwrap();
        assert!(
            text.ends_with(
                "host all gpadmin 10.0.0.7/32 trust # gp_recovery: for host 10.0.0.7\n\
             host replication gpadmin 10.0.0.7/32 trust # gp_recovery: for host 10.0.0.7\n"
            ),
            "{text}"
        );
        assert!(printed(&run_local(&s.forget_host(&d, &h, "10.0.0.7")).1, HBA_CHANGED));
        assert_eq!(
            std::fs::read_to_string(&hba).unwrap(),
            format!("local all all trust\n{mine_before}"),
            "10.0.0.77 kept"
        );
        let (rc, out) = run_local(&s.forget_host(&d, &h, "10.0.0.7"));
        assert!(rc == 0 && !printed(&out, HBA_CHANGED), "nothing left to remove: {out}");
        assert_eq!(std::fs::read_to_string(dir.join("reloads")).unwrap(), "reload\nreload\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn space_reports_the_file_system_the_copy_fills() {
        let dir = scratch("space");
        let d = dir.join("seg 'x'");
        let ds = d.to_string_lossy().into_owned();
        std::fs::create_dir_all(&d).unwrap();
        let s = scripts();
        // Relocating into a directory that does not exist yet: its nearest ancestor.
        let (rc, out) = run_local(&s.space(&format!("{ds}/not/yet"), false, true));
        assert_eq!(rc, 0, "{out}");
        let space = crate::recovery::Space::parse(&out).unwrap();
        assert_eq!((space.path.as_str(), space.used_bytes, space.marked), (ds.as_str(), 0, false), "{out}");
        assert!(space.avail_bytes > 0);
        std::fs::write(d.join("f"), vec![1u8; 64 << 10]).unwrap();
        std::fs::write(sibling(&ds, INCOMPLETE_SUFFIX), "").unwrap();
        let space = crate::recovery::Space::parse(&run_local(&s.space(&ds, true, true)).1).unwrap();
        assert_eq!(space.path, dir.to_string_lossy(), "in place the copy is made beside it");
        assert!(space.used_bytes >= 64 << 10 && space.marked, "{space:?}");
        let unmeasured = crate::recovery::Space::parse(&run_local(&s.space(&ds, true, false)).1).unwrap();
        assert_eq!((unmeasured.used_bytes, unmeasured.marked), (0, true), "no du unless asked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A tablespace outside the data directory: the copy's contents come
    /// in and the old go aside at the swap (also when run again after a
    /// crash), come back at a backout, and are removed once synchronized.
    #[test]
    fn a_full_copy_swaps_tablespaces_outside_the_directory() {
        let dir = scratch("swap-tblspc");
        let (d, loc) = (dir.join("seg"), dir.join("far 'x'"));
        let ds = d.to_string_lossy().into_owned();
        let new = PathBuf::from(sibling(&ds, NEW_SUFFIX));
        let copy = PathBuf::from(tablespace_sibling(&loc.to_string_lossy(), NEW_SUFFIX));
        let version = |base: &Path| base.join("PG_15_1").join("f");
        for (base, text) in [(&loc, "old"), (&copy, "new")] {
            std::fs::create_dir_all(version(base).parent().unwrap()).unwrap();
            std::fs::write(version(base), text).unwrap();
        }
        for (data, target) in [(&d, &loc), (&new, &copy)] {
            std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
            std::os::unix::fs::symlink(target, data.join("pg_tblspc/16384")).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let s = scripts();
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.back_out_copy(&ds, false)).0, 0, "a failed copy");
        assert_eq!(read(version(&loc)), "old");
        assert!(!copy.exists() && !new.exists());
        // Again, and the swap is interrupted after the tablespace moved.
        std::fs::create_dir_all(version(&copy).parent().unwrap()).unwrap();
        std::fs::write(version(&copy), "new").unwrap();
        std::fs::create_dir_all(new.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&copy, new.join("pg_tblspc/16384")).unwrap();
        let old = loc.join(OLD_SUFFIX);
        std::fs::create_dir_all(&old).unwrap();
        std::fs::rename(loc.join("PG_15_1"), old.join("PG_15_1")).unwrap();
        std::fs::rename(copy.join("PG_15_1"), loc.join("PG_15_1")).unwrap();
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0);
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0, "a swap run again goes on");
        assert_eq!(read(version(&loc)), "new");
        assert_eq!(read(version(&old)), "old");
        assert_eq!(std::fs::read_link(d.join("pg_tblspc/16384")).unwrap(), loc);
        assert_eq!(run_local(&s.back_out_copy(&ds, false)).0, 0);
        assert_eq!(read(version(&loc)), "old");
        assert!(!old.exists() && !copy.exists() && !new.exists());
        assert_eq!(std::fs::read_link(d.join("pg_tblspc/16384")).unwrap(), loc);
        // Swapped and synchronized: the old contents go.
        std::fs::create_dir_all(version(&copy).parent().unwrap()).unwrap();
        std::fs::write(version(&copy), "new").unwrap();
        std::fs::create_dir_all(new.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&copy, new.join("pg_tblspc/16384")).unwrap();
        claim(&ds, 7, "-");
        assert_eq!(run_local(&s.swap_in(&ds)).0, 0);
        // A deletion a crash cut short is finished too, but a directory
        // without the discard mark that only looks like one is left alone.
        let stray = PathBuf::from(format!("{}{REMOVING_SUFFIX}.1", sibling(&ds, OLD_SUFFIX)));
        std::fs::create_dir_all(stray.join("base")).unwrap();
        std::fs::write(stray.join(DISCARD_MARK), "").unwrap();
        let lookalike = PathBuf::from(format!("{}{REMOVING_SUFFIX}.2", sibling(&ds, OLD_SUFFIX)));
        std::fs::create_dir_all(lookalike.join("base")).unwrap();
        assert_eq!(run_local(&s.remove_old(&ds)).0, 0);
        assert_eq!(read(version(&loc)), "new");
        assert!(!old.exists() && !PathBuf::from(sibling(&ds, OLD_SUFFIX)).exists());
        // The renamed old directories are deleted in the background.
        let removing = |d: &Path| {
            std::fs::read_dir(d).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(REMOVING_SUFFIX))
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (removing(&loc) || stray.exists()) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!removing(&loc), "old directories left behind");
        assert!(!stray.exists() && lookalike.join("base").exists(), "only marked directories are deleted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_pairs_own_server_started_in_its_directory_is_stopped() {
        let dir = scratch("stop");
        let ds = dir.join("seg").to_string_lossy().into_owned();
        std::fs::create_dir_all(&ds).unwrap();
        let sysid = dir.join("sysid");
        let bin = fake_bin(
            &dir,
            &[
                ("pg_ctl", "case \"$1\" in status) exit 0;; esac"),
                (
                    "pg_controldata",
                    &format!("echo \"Database system identifier:           $(cat {})\"", sysid.display()),
                ),
            ],
        );
        let s = Scripts { bindir: bin, ..scripts() };
        let calls = || std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
        let pidfile =
            |data_dir: &str| std::fs::write(format!("{ds}/postmaster.pid"), format!("123\n{data_dir}\n")).unwrap();
        std::fs::write(&sysid, "99").unwrap();
        pidfile(&ds);
        let (rc, out) = run_local(&s.stop(&ds, false));
        assert_eq!(rc, REFUSED, "{out}");
        assert!(out.contains("has database system identifier 99, not the pair's 42"), "{out}");
        std::fs::write(&sysid, "42").unwrap();
        pidfile("/somewhere/else");
        let (rc, out) = run_local(&s.stop(&ds, false));
        assert_eq!(rc, REFUSED, "{out}");
        assert!(out.contains("was started in /somewhere/else, not in"), "{out}");
        let unknown = Scripts { owner: Owner { system_identifier: String::new(), ..owner(7) }, ..s.clone() };
        pidfile(&ds);
        assert!(run_local(&unknown.stop(&ds, false)).1.contains("no database system identifier is recorded"));
        assert!(!calls().contains("pg_ctl stop"), "nothing was stopped: {}", calls());
        // The pair's server, started in this directory, is stopped (the fake
        // keeps saying it runs, so the step reports that).
        let (rc, out) = run_local(&s.stop(&ds, false));
        assert_eq!(rc, 1, "{out}");
        assert!(calls().contains("pg_ctl stop -D"), "{}", calls());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_step_touches_the_coordinators_directory_under_any_name() {
        let dir = scratch("guard");
        let coordinator = dir.join("coordinator");
        std::fs::create_dir_all(coordinator.join("base")).unwrap();
        std::os::unix::fs::symlink(&coordinator, dir.join("link")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        let s = Scripts {
            coordinator: Coordinator {
                machine: crate::identity::local_machine(),
                datadir: crate::identity::local_path_id(&coordinator).unwrap(),
                system_identifier: "1".into(),
            },
            ..scripts()
        };
        let d = dir.display();
        for target in [
            format!("{d}/coordinator"),
            format!("{d}/link"),
            format!("{d}/link/base"),
            format!("{d}/link/x/y"),
            d.to_string(),
        ] {
            let (rc, out) = run_local(&s.configure_standby(&target, "x"));
            assert_eq!(rc, REFUSED, "{target}: {out}");
            assert!(out.contains("the coordinator's data directory"), "{target}: {out}");
        }
        // A job for the coordinator's standby shares its database system, never its directory.
        let standby_job = Scripts { owner: Owner { job: 1, dbid: 3, system_identifier: "1".into() }, ..s.clone() };
        let (rc, out) = run_local(&standby_job.configure_standby(&format!("{d}/link"), "x"));
        assert_eq!(rc, REFUSED, "{out}");
        assert!(!coordinator.join("standby.signal").exists() && !coordinator.join("postgresql.auto.conf").exists());
        assert_eq!(run_local(&s.configure_standby(&format!("{d}/other"), "x")).0, 0, "another directory");
        // Another machine's inode numbers say nothing here.
        let elsewhere =
            Scripts { coordinator: Coordinator { machine: "other/boot".into(), ..s.coordinator.clone() }, ..s };
        assert_eq!(run_local(&elsewhere.read_auto_conf(&format!("{d}/link"))).0, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_host_reports_its_directories_by_device_and_inode() {
        use crate::identity::{HostReport, Overlap};
        let dir = scratch("identify");
        let seg = dir.join("seg");
        let location = dir.join("ts");
        std::fs::create_dir_all(seg.join("pg_tblspc")).unwrap();
        std::fs::create_dir_all(&location).unwrap();
        std::os::unix::fs::symlink(&location, seg.join("pg_tblspc/16384")).unwrap();
        std::os::unix::fs::symlink(&seg, dir.join("alias")).unwrap();
        let d = dir.display();
        let paths = [format!("{d}/alias/new"), seg.display().to_string(), format!("{d}/ts/inner")];
        let (rc, out) = run_local(&scripts().identify(&paths, true));
        assert_eq!(rc, 0, "{out}");
        let r = HostReport::parse(&out, 3).unwrap();
        assert_eq!(r.machine, crate::identity::local_machine(), "the script and the worker name the machine alike");
        assert_eq!(r.dirs[1].path, crate::identity::local_path_id(&seg).unwrap(), "the script and the worker agree");
        assert_eq!(r.dirs[0].path.overlap(&r.dirs[1].path), Some(Overlap::Inside), "through the link");
        assert_eq!(r.dirs[2].path.overlap(&r.dirs[1].tablespaces[0]), Some(Overlap::Inside));
        assert_eq!(r.dirs[1].path.overlap(&r.dirs[1].tablespaces[0]), None);
        let (path_max, name_max) = r.limits.unwrap();
        assert!(path_max >= 1024 && name_max >= 255, "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_copy_removes_only_what_an_earlier_job_of_its_segment_left() {
        let dir = scratch("stale");
        let ds = dir.join("seg").to_string_lossy().into_owned();
        std::fs::create_dir_all(&ds).unwrap();
        let new = PathBuf::from(sibling(&ds, NEW_SUFFIX));
        let bin = fake_bin(&dir, &[("pg_basebackup", "mkdir -p \"$2\"")]);
        let s = Scripts { bindir: bin, ..scripts() };
        std::fs::create_dir_all(new.join("base")).unwrap();
        let (rc, out) = run_local(&s.basebackup(&ds, false, &[], &[]));
        assert_eq!(rc, REFUSED, "unclaimed: {out}");
        assert!(new.join("base").exists());
        std::fs::write(sibling(&ds, CLAIM_SUFFIX), "job 5 dbid 4 dir -\n").unwrap();
        assert_eq!(run_local(&s.basebackup(&ds, false, &[], &[])).0, REFUSED, "another segment's");
        claim(&ds, 5, "-");
        let (rc, out) = run_local(&s.basebackup(&ds, false, &[], &[]));
        assert_eq!(rc, 0, "an ended job of this segment left it: {out}");
        assert!(new.is_dir() && !new.join("base").exists());
        assert_eq!(std::fs::read_to_string(sibling(&ds, CLAIM_SUFFIX)).unwrap(), "job 7 dbid 3 dir -\n");
        // A relocation claims the directory it makes, by device and inode.
        let target = dir.join("moved").to_string_lossy().into_owned();
        let (rc, out) = run_local(&s.basebackup(&target, true, &[], &[]));
        assert_eq!(rc, 0, "{out}");
        let line = std::fs::read_to_string(sibling(&target, CLAIM_SUFFIX)).unwrap();
        assert_eq!(line, format!("job 7 dbid 3 dir {}\n", dev_ino(&target)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
