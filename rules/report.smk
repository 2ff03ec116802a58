# What users read: one figure target per paper item (PNG + PDF + the CSV behind it), the summary page with the
# papers' numbers beside this run's, and the static feature browser. Every figure and table is registered for
# `snakemake --report`. Library: scripts/difflens/report/ (catalog.py lists the items).
from difflens.report.catalog import ITEMS, REVELIO, INFO as INFO_FAMILY, SHAPES, STEER as STEER_FAMILY


report: "../report/workflow.rst"


localrules:
    render_figure,
    summary_page,


FAMILY_NAMES = {REVELIO: "Revelio (layers, timesteps, k-SAE, Diff-C)",
                INFO_FAMILY: "Information decomposition (Kong et al.)", SHAPES: "Shapes world",
                STEER_FAMILY: "Steering k-SAE latents"}


rule render_figure:
    input:
        unpack(lambda w: report_inputs(f"{w.family}/{w.item}")),
    output:
        png=report(f"{R}/figures/{{family}}/{{item}}.png", caption="../report/figure.rst",
                   category=lambda w: FAMILY_NAMES[w.family], subcategory=lambda w: paper_item(w).paper),
        pdf=f"{R}/figures/{{family}}/{{item}}.pdf",
        csv=report(f"{R}/figures/{{family}}/{{item}}.csv", caption="../report/table.rst",
                   category=lambda w: FAMILY_NAMES[w.family], subcategory=lambda w: paper_item(w).paper),
    wildcard_constraints:
        family="|".join(FAMILY_NAMES),
        item=r"[a-z0-9]+",
    params:
        key=lambda w: f"{w.family}/{w.item}",
        paper=lambda w: paper_item(w).paper,
        title=lambda w: paper_item(w).title,  # read by the --report captions (report/figure.rst, table.rst)
        config_file=lambda w: paper_item(w).config,
        palette=lambda w: palette_spec(),
        dit_models=lambda w: [n for n, m in config["models"].items() if m["kind"] == "dit"],
        results=lambda w, output: str(Path(output.png).parents[2]),
        grid_latents=3,  # latents per SAE in the paper items' mosaics (sae.grid_latents: each SAE's own grid)
        identity=lambda w: paper_identities(config),  # the papers' numbers are drawn like for like only
    log:
        f"{R}/logs/render_figure/{{family}}/{{item}}.log",
    benchmark:
        f"{R}/benchmarks/render_figure/{{family}}/{{item}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/render_figure.py"


rule feature_browser:
    input:
        unpack(browser_inputs),
    output:
        report(directory(f"{R}/browser"), htmlindex="index.html", caption="../report/browser.rst",
               category="Feature browser"),
    params:
        results=lambda w, output: str(Path(output[0]).parent),
        runs=lambda w: browser_runs(),
        info=lambda w: browser_info(),
        steer=lambda w: STEER["targets"],  # the steered SAEs: their latents' steering strips
        seed=config["seed"],
        options=config["browser"],
    threads: 1
    resources:
        runtime=browser_runtime,  # re-reads every SAE's split
        mem_mb=browser_mem,
    log:
        f"{R}/logs/feature_browser.log",
    benchmark:
        f"{R}/benchmarks/feature_browser.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/build_browser.py"


rule summary_page:
    input:
        unpack(summary_inputs),
    output:
        md=report(f"{R}/summary.md", caption="../report/summary.rst", category="Summary"),
        html=f"{R}/summary.html",
    params:
        models={n: m["kind"] for n, m in config["models"].items()},
        identity=paper_identities(config),  # which models, data sets and protocols are the papers'
        browser=lambda w: bool(browser_runs() or browser_info()),
    log:
        f"{R}/logs/summary_page.log",
    benchmark:
        f"{R}/benchmarks/summary_page.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/summary_page.py"
