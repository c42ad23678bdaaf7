//! `ondevice quantize SOURCE --format mlx --bits B [--group-size G] --output DIR`: a Hugging Face
//! safetensors directory or an F32/F16/BF16 GGUF → an MLX-LM directory (affine group
//! quantization, `ondevice_quantize::mlx`), run here in this process with a progress bar; DIR is
//! written atomically and the provenance receipt printed (`--json`: the whole receipt).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ondevice_quantize::mlx::{self, MlxOptions, MlxReceipt};

use crate::cli::QuantizeArgs;

/// Runs the MLX export.
pub async fn run(args: &QuantizeArgs) -> anyhow::Result<ExitCode> {
    let Some(output) = args.output.clone() else {
        anyhow::bail!("--format mlx writes a directory: pass --output DIR (MLX models are not registered)");
    };
    let Some(bits) = args.bits else {
        anyhow::bail!("--format mlx needs --bits: 2, 3, 4, 5, 6 or 8 (4 is the usual choice)");
    };
    let gguf_only = [
        (!args.quant_type.is_empty(), "--type"),
        (args.imatrix.is_some(), "--imatrix"),
        (args.make_imatrix, "--make-imatrix"),
        (args.allow_requantize, "--allow-requantize"),
        (!args.tensor_type.is_empty(), "--tensor-type"),
        (args.output_tensor_type.is_some(), "--output-tensor-type"),
        (args.token_embedding_type.is_some(), "--token-embedding-type"),
        (args.name.is_some(), "--name"),
    ];
    if let Some((_, flag)) = gguf_only.iter().find(|(set, _)| *set) {
        anyhow::bail!(
            "{flag} is for GGUF output: leave it out with --format mlx (which takes --bits and --group-size)"
        );
    }
    let options = MlxOptions::new(bits, args.group_size.unwrap_or(64))?;
    let source = PathBuf::from(&args.source);
    if !source.exists() {
        anyhow::bail!(
            "{} is not a file or directory: --format mlx reads a Hugging Face safetensors directory or an F16/F32 GGUF file",
            source.display()
        );
    }
    if output.exists() {
        anyhow::bail!("{} already exists: choose another --output or remove it", output.display());
    }
    let source = std::path::absolute(&source).with_context(|| format!("cannot resolve {}", source.display()))?;
    let out = std::path::absolute(&output).with_context(|| format!("cannot resolve {}", output.display()))?;
    let receipt = tokio::task::spawn_blocking(move || {
        let bar = super::TermBar::new();
        let r = mlx::export(&source, &out, options, &bar);
        bar.finish();
        r
    })
    .await
    .context("the quantization thread failed")??;
    print(&receipt, &output, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print(receipt: &MlxReceipt, output: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(receipt)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} bytes in {} files, mlx affine {}-bit, group {})",
        output.display(),
        receipt.output_size,
        receipt.files.len(),
        receipt.bits,
        receipt.group_size
    );
    println!("sha256:{} (over the files' digests)", receipt.output_sha256);
    println!("source sha256:{} ({} files)", receipt.source_sha256, receipt.inputs.len());
    Ok(())
}
