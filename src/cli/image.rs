//! `castra image`: build the default guest image or print where it is.
//! Parses arguments and renders results; the work is in `crate::image`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::out::outln;
use crate::image::{self, BuildOptions, DefaultImage, KernelChoice};

/// Build or locate castra's default guest image.
#[derive(Debug, Args)]
#[command(long_about = "Build or locate castra's default guest image.\n\n\
The image is a kernel (by default built from Debian's linux-source-6.1 with \
guest/kernel/castra.config, everything built in; or, with --kernel debian, the stock \
linux-image-amd64 and its modules), uncompressed for -M microvm, and a \
busybox initramfs whose init brings up the network on \
QEMU's user-mode NAT, and powers off on the ACPI power button. It lives in the cache \
directory ($CASTRA_CACHE_DIR, else $XDG_CACHE_HOME/castra, else ~/.cache/castra) and \
is rebuilt only when its inputs change.")]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the default guest image (a no-op when its inputs are unchanged).
    #[command(long_about = "Build the default guest image.\n\n\
By default compiles the fast kernel from /usr/src/linux-source-6.1.tar.xz (make \
tinyconfig + guest/kernel/castra.config, make vmlinux: minutes on a small machine, \
with a progress line every 15 s; cached by the hash of the source, the fragment and \
the compiler). With --kernel debian, fetches linux-image-amd64 with `apt-get download` \
(reusing copies in the cache and in /var/cache/apt/archives, so it works offline once \
fetched). Takes busybox from busybox-static and packs the initramfs. Prints one line \
per step. When an image built from the same inputs exists, it says so and does nothing.")]
    Build(BuildArgs),
    /// Print the kernel, initrd and command line of the built image.
    #[command(
        long_about = "Print the kernel, initrd and command line of the built image.\n\n\
Exits 1 with the command to run if no image has been built."
    )]
    Path(PathArgs),
    /// Remove old image builds from the cache (never one a running VM uses).
    #[command(long_about = "Remove old image builds from the cache.\n\n\
Removes default image builds other than the current one, Debian+Nix builds other than \
its current one and all but its newest debootstrap tree, and kernel packages the \
current image was not built from. Anything a running process (a QEMU of any project) \
names on its command line is kept. Prints what it removes and keeps, and the space \
reclaimed; exits 1 if something could not be removed.")]
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Rebuild even if an image with the same inputs already exists.
    #[arg(long)]
    pub force: bool,
    /// The guest kernel: `fast` (built from Debian's linux-source-6.1 with
    /// guest/kernel/castra.config; minutes the first time, cached) or `debian`
    /// (the stock linux-image-amd64 package). The choice is part of the image id.
    #[arg(long, value_enum, default_value = "fast", value_name = "KERNEL")]
    pub kernel: KernelArg,
    /// The kernel source tarball for `--kernel fast`
    /// (default: /usr/src/linux-source-6.1.tar.xz, from the linux-source-6.1 package).
    #[arg(long, value_name = "PATH")]
    pub kernel_source: Option<PathBuf>,
    /// Use this linux-image-<version>-amd64 .deb instead of asking apt (`--kernel debian`).
    #[arg(long, value_name = "PATH")]
    pub kernel_deb: Option<PathBuf>,
    /// Use this static busybox binary or busybox-static .deb.
    #[arg(long, value_name = "PATH")]
    pub busybox: Option<PathBuf>,
    /// The static guest agent to put in the image as /bin/castra-agent
    /// (default: $CASTRA_AGENT, beside castra, or the cargo target directory).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Print the result as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `--kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelArg {
    Fast,
    Debian,
}

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ImageArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ImageCommand::Build(b) => build(b),
        ImageCommand::Path(p) => path(p),
        ImageCommand::Prune(p) => prune(p),
    }
}

fn prune(args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let root = image::cache_root();
    let plan = image::prune::plan(&root, &image::prune::running_command_lines());
    let (reclaimed, errors) = if args.dry_run {
        (plan.bytes(), Vec::new())
    } else {
        image::prune::remove(&plan)
    };
    if args.json {
        let value = json!({
            "cache_root": root,
            "dry_run": args.dry_run,
            "removed": plan.remove,
            "kept": plan.keep,
            "reclaimed_bytes": reclaimed,
            "errors": errors,
        });
        println!("{value}");
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for e in &plan.remove {
            let size = super::clean::human_bytes(e.bytes);
            println!("{verb} {} ({size}): {}", e.path.display(), e.why);
        }
        for e in &plan.keep {
            println!("kept {}: {}", e.path.display(), e.why);
        }
        for e in &errors {
            eprintln!("error: {e}");
        }
        let verb = if args.dry_run {
            "would reclaim"
        } else {
            "reclaimed"
        };
        println!(
            "{verb} {} in {}",
            super::clean::human_bytes(reclaimed),
            root.display()
        );
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::EXIT_ERROR)
    })
}

fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    if args.kernel_deb.is_some() && args.kernel == KernelArg::Fast {
        anyhow::bail!(
            "--kernel-deb names a Debian kernel package: add `--kernel debian` (the default `fast` kernel is built from source)"
        );
    }
    let opts = BuildOptions {
        force: args.force,
        kernel: match args.kernel {
            KernelArg::Fast => KernelChoice::Fast,
            KernelArg::Debian => KernelChoice::Debian,
        },
        kernel_source: args.kernel_source.clone(),
        kernel_deb: args.kernel_deb.clone(),
        busybox: args.busybox.clone(),
        extra_files: vec![(
            image::agent::find(args.agent.as_deref()).map_err(anyhow::Error::msg)?,
            image::agent::GUEST_PATH.to_string(),
            0o755,
        )],
    };
    let json = args.json;
    // Progress lines; a reader gone meanwhile does not stop the build (the
    // result below then meets the closed pipe).
    let mut progress = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            let _ = outln!("{line}");
        }
    };
    let image =
        image::build(&opts, &mut progress).context("cannot build the default guest image")?;
    if json {
        print_json(&image)?;
    } else {
        print_text(&image)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn path(args: &PathArgs) -> anyhow::Result<ExitCode> {
    let image = image::locate()?;
    if args.json {
        print_json(&image)?;
    } else {
        print_text(&image)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(image: &DefaultImage) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "kernel:  {}", image.kernel.display())?;
    writeln!(out, "initrd:  {}", image.initrd.display())?;
    writeln!(out, "cmdline: {}", image.cmdline)?;
    writeln!(out, "id:      {}", image.id)?;
    Ok(())
}

fn print_json(image: &DefaultImage) -> anyhow::Result<()> {
    let value = json!({
        "kernel": image.kernel,
        "initrd": image.initrd,
        "cmdline": image.cmdline,
        "id": image.id,
        "cache_root": image::cache_root(),
    });
    outln!("{}", serde_json::to_string_pretty(&value)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "castra-image")]
    struct Cli {
        #[command(flatten)]
        image: ImageArgs,
    }

    #[test]
    fn parses_build_flags() {
        let cli = Cli::try_parse_from([
            "castra-image",
            "build",
            "--force",
            "--kernel",
            "debian",
            "--kernel-deb",
            "k.deb",
            "--busybox",
            "/bin/busybox",
            "--json",
        ])
        .unwrap();
        let ImageCommand::Build(b) = cli.image.command else {
            panic!("expected build");
        };
        assert!(b.force && b.json);
        assert_eq!(b.kernel, KernelArg::Debian);
        assert_eq!(b.kernel_deb, Some(PathBuf::from("k.deb")));
        assert_eq!(b.busybox, Some(PathBuf::from("/bin/busybox")));
    }

    #[test]
    fn help_text() {
        Cli::command().debug_assert();
        let mut cmd = Cli::command();
        let build = cmd.find_subcommand_mut("build").unwrap();
        insta::assert_snapshot!(build.render_help().to_string());
    }
}
