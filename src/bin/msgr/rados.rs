//! `msgr rados`: object I/O against a real Ceph cluster through msgr's RADOS client (put, get, stat,
//! rm, ls), and the connection options `msgr bench --mode rados` shares.

use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use msgr::rados::objecter::RadosError;

use crate::bench::rados::ConnError;
pub use crate::bench::rados::RadosConnArgs;
use crate::{Failure, EXIT_OK};

impl From<ConnError> for Failure {
    fn from(e: ConnError) -> Self {
        if e.usage {
            Failure::usage(e.message)
        } else {
            Failure::fail(e.message)
        }
    }
}

/// What `msgr rados` does to the object.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RadosOp {
    /// Write FILE (or stdin, "-") as OBJ's whole content.
    Put,
    /// Write OBJ's content to FILE (or stdout: no FILE or "-").
    Get,
    /// Print OBJ's size and modification time.
    Stat,
    /// Remove OBJ.
    Rm,
    /// List the pool's objects, one per line (no OBJ).
    Ls,
}

/// `msgr rados --mon-host ADDRS [--keyring FILE --name NAME] -p POOL put|get|stat|rm|ls OBJ [FILE]`
#[derive(clap::Args, Debug)]
#[command(
    about = "Object I/O on a real Ceph cluster: put, get, stat, rm, ls (like Ceph's `rados`)",
    long_about = "Object I/O on a real Ceph cluster through msgr's own RADOS client, like Ceph's `rados` \
tool: put, get, stat, rm and ls (through the pgnls op).\n\n\
The client hunts across the --mon-host monitors, authenticates (auth none, or cephx with --keyring, to the \
monitor and to the OSDs), subscribes to the OSD map, computes each object's placement (CRUSH) itself and \
talks msgr2.1 to the primary OSD, resending when the map moves the object or the OSD session resets.\n\n\
Exit status: 0 on success, 1 if the operation failed (the message says why: no such pool, no such object, \
refused by an OSD with its errno, timed out), 2 on bad usage.",
    after_help = "Examples:\n  \
msgr rados --mon-host v2:127.0.0.1:3300 -p test put obj1 ./file\n  \
msgr rados --mon-host v2:127.0.0.1:3300 -p test get obj1 ./copy\n  \
msgr rados --mon-host '[v2:10.0.0.1:3300,v1:10.0.0.1:6789],10.0.0.2:3300' --keyring /etc/ceph/ceph.client.admin.keyring \
-p rbd ls"
)]
pub struct RadosArgs {
    #[command(flatten)]
    pub conn: RadosConnArgs,

    /// The pool.
    #[arg(short = 'p', long = "pool", value_name = "POOL")]
    pub pool: String,

    /// The operation.
    #[arg(value_enum)]
    pub op: RadosOp,

    /// The object (not for ls).
    #[arg(value_name = "OBJ")]
    pub obj: Option<String>,

    /// put: the file to store ("-": stdin); get: where to write ("-" or none: stdout).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

fn rados_failure(e: RadosError) -> Failure {
    Failure::fail(e.to_string())
}

pub fn run(args: &RadosArgs) -> Result<u8, Failure> {
    let obj = match (args.op, &args.obj) {
        (RadosOp::Ls, None) => String::new(),
        (RadosOp::Ls, Some(_)) => return Err(Failure::usage("ls takes no OBJ")),
        (_, Some(o)) if !o.is_empty() => o.clone(),
        (op, _) => return Err(Failure::usage(format!("{op:?} needs OBJ").to_lowercase())),
    };
    let put_data = if args.op == RadosOp::Put {
        let file = args
            .file
            .as_ref()
            .ok_or_else(|| Failure::usage("put needs FILE (\"-\" for stdin)"))?;
        Some(read_input(file)?)
    } else {
        None
    };
    let rados = args.conn.connect()?;
    let pool = rados.pool_id(&args.pool).map_err(rados_failure)?;
    match args.op {
        RadosOp::Put => {
            let data = put_data.unwrap_or_default();
            rados.write_full(pool, &obj, data).map_err(rados_failure)?;
        }
        RadosOp::Get => {
            let data = rados.read_all(pool, &obj).map_err(rados_failure)?;
            write_output(args.file.as_ref(), &data)?;
        }
        RadosOp::Stat => {
            let (size, mtime) = rados.stat(pool, &obj).map_err(rados_failure)?;
            println!(
                "{}/{} mtime {}.{:09}, size {}",
                args.pool, obj, mtime.sec, mtime.nsec, size
            );
        }
        RadosOp::Rm => rados.remove(pool, &obj).map_err(rados_failure)?,
        RadosOp::Ls => {
            let names = rados.list(pool).map_err(rados_failure)?;
            let mut out = std::io::stdout().lock();
            for n in names {
                let _ = writeln!(out, "{n}");
            }
        }
    }
    Ok(EXIT_OK)
}

fn read_input(file: &PathBuf) -> Result<Bytes, Failure> {
    let mut buf = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::fail(format!("reading stdin: {e}")))?;
    } else {
        buf = std::fs::read(file)
            .map_err(|e| Failure::fail(format!("reading {}: {e}", file.display())))?;
    }
    Ok(Bytes::from(buf))
}

fn write_output(file: Option<&PathBuf>, data: &[u8]) -> Result<(), Failure> {
    match file {
        Some(f) if f.as_os_str() != "-" => std::fs::write(f, data)
            .map_err(|e| Failure::fail(format!("writing {}: {e}", f.display()))),
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(data)
                .and_then(|()| out.flush())
                .map_err(|e| Failure::fail(format!("writing stdout: {e}")))
        }
    }
}
