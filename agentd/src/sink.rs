//! Where event lines go: stdout, or a file rotated by size. Every sink takes whole lines, so
//! another transport (the control plane's gRPC event stream) plugs in behind the same trait.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

/// A destination for event lines.
pub trait Sink: Send {
    /// Writes one line; `line` ends with a newline.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Makes what was written visible (called after each batch of events).
    fn flush(&mut self) -> io::Result<()>;
}

/// Standard output, buffered: written out at each flush.
pub struct Stdout(BufWriter<io::Stdout>);

impl Stdout {
    #[must_use]
    pub fn new() -> Self {
        Self(BufWriter::with_capacity(1 << 16, io::stdout()))
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for Stdout {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.0.write_all(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A file that is renamed to `FILE.1` when it reaches `rotate_bytes` (`FILE.1` to `FILE.2`,
/// and so on, keeping `keep` old files), and started again. A line is never split across
/// files.
pub struct RotatingFile {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    written: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, rotate_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            rotate_bytes,
            keep,
            file: BufWriter::new(file),
            written,
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            fs::rename(&self.path, self.numbered(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = BufWriter::new(file);
        self.written = 0;
        Ok(())
    }
}

impl Sink for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The sink `output` names: `-` for stdout, otherwise a rotating file.
pub fn open(output: &Path, rotate_bytes: u64, keep: u32) -> io::Result<Box<dyn Sink>> {
    if output == Path::new("-") {
        Ok(Box::new(Stdout::new()))
    } else {
        Ok(Box::new(RotatingFile::open(output, rotate_bytes, keep)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rotates_whole_lines_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut sink = RotatingFile::open(&path, 20, 2).unwrap();
        for i in 0..7 {
            sink.write_line(format!("line-{i:04}\n").as_bytes())
                .unwrap();
        }
        sink.flush().unwrap();
        // 10-byte lines, 20 bytes per file: pairs, newest in the file itself.
        assert_eq!(fs::read_to_string(&path).unwrap(), "line-0006\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("events.json.1")).unwrap(),
            "line-0004\nline-0005\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("events.json.2")).unwrap(),
            "line-0002\nline-0003\n"
        );
        assert!(!dir.path().join("events.json.3").exists(), "only two kept");
    }

    #[test]
    fn reopening_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        fs::write(&path, "0123456789\n").unwrap();
        let mut sink = RotatingFile::open(&path, 15, 1).unwrap();
        sink.write_line(b"abcdefghij\n").unwrap();
        sink.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "abcdefghij\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("e.1")).unwrap(),
            "0123456789\n"
        );
    }
}
