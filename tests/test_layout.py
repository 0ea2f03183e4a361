"""The package's import graph: arrows point down the data flow, and no module imports its way back into itself."""

import ast
from pathlib import Path

import maskgit

PKG = Path(maskgit.__file__).parent

# lower layers first; a module may import only from its own layer or below
LAYERS = [
    ["maskgit.errors", "maskgit.config", "maskgit.storage.files", "maskgit.outputs", "maskgit.inference",
     "maskgit.devices", "maskgit.step_plan", "maskgit.model_checks", "maskgit.distributed"],
    ["maskgit.sampling", "maskgit.runtime"],  # runtime: the numpy + onnxruntime decoder (no torch)
    ["maskgit.models"],
    ["maskgit.storage"],
    ["maskgit.data"],
    ["maskgit.training"],
    ["maskgit.families"],  # model families from outside (aMUSEd): parts in the Pipeline's interface
    ["maskgit.names", "maskgit.edits", "maskgit.pipeline"],
    ["maskgit.evaluation"],
    ["maskgit.serving"],
    ["maskgit.commands", "maskgit.cli", "maskgit.__main__", "maskgit"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(mod: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{mod} belongs to no layer: add it to LAYERS"
    return best


def imports_of(path: Path, mod: str, modules: set[str]) -> set[str]:
    """maskgit modules that ``path`` imports, at any depth (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != mod:
                out.add(n)
    return out


def module_files() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p): p for p in PKG.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(p, m, set(files)) for m, p in files.items()}


def test_every_import_points_down_the_layers():
    bad = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
           for m, deps in graph().items() for d in deps
           if layer_of(d) > layer_of(m) and not (m.startswith(d + ".") or m == d)]  # a package's own __init__
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    # the package __init__s re-export their children; a child importing its parent package is not a cycle
    g = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2
    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk must catch a function-level import of the CLI from a model (else the tests above prove nothing)."""
    f = PKG / "models" / "vqgan.py"
    fake = tmp_path / "vqgan.py"
    fake.write_text(f.read_text() + "\n\ndef _bad():\n    from maskgit.commands.common import resolve_device\n")
    deps = imports_of(fake, "maskgit.models.vqgan", set(graph()))
    assert "maskgit.commands.common" in deps and layer_of("maskgit.commands.common") > layer_of("maskgit.models.vqgan")


def test_public_api_stays_importable_from_the_top():
    for name in ("load", "Pipeline", "decode", "SampleConfig", "TransformerConfig", "VQGANConfig", "TrainConfig",
                 "MaskGITError"):
        assert hasattr(maskgit, name), name


def _file_map() -> set[str]:
    """Paths named by the README's file map (the code block under "## Files"), folders as 'x/'."""
    readme = (PKG.parents[1] / "README.md").read_text()
    block = readme.split("## Files", 1)[1].split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 30):  # blank, or a continued description
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        stack = stack[:depth] + [name]
        paths.add("".join(stack))
    return paths


def test_readme_file_map_matches_the_tree():
    root = PKG.parents[1]
    listed = _file_map()
    modules = {str(p.relative_to(root)) for p in PKG.rglob("*.py")
               if p.name != "__init__.py" or p.parent == PKG} - {"src/maskgit/commands/__init__.py"}
    folded = {p for p in modules if p.startswith("src/maskgit/commands/")}  # one line for the commands
    missing = sorted(m for m in modules - folded if m not in listed)
    assert not missing, "modules missing from the README's file map: " + ", ".join(missing)
    gone = sorted(p for p in listed if p.startswith(("src/", "benchmarks/")) and "," not in p
                  and not (root / p).exists())
    assert not gone, "the README's file map names paths that do not exist: " + ", ".join(gone)
    scripts = {f"benchmarks/{p.name}" for p in (root / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    assert not sorted(scripts - listed), "benchmark scripts missing from the file map: " + ", ".join(
        sorted(scripts - listed))


# Which module owns which concept: the rule is written there, once. A function or class of the same name elsewhere
# in the package is allowed only as a face of the owner's (its body calls the owner's function of that name).
CONCEPTS = {
    "the decode loop, for torch and numpy": ("maskgit.sampling.arithmetic", (
        "decode_loop", "fixed_priority", "filter_logits", "sample_tokens", "gumbel", "guide", "guidance_scale")),
    "the mask schedule, of training and decoding": ("maskgit.sampling.arithmetic", (
        "mask_ratio", "decode_mask_ratio", "mask_counts")),
    "the mask schedule on torch tensors (mask_ratio's)": ("maskgit.sampling.schedules", ("gamma",)),
    "what a sampling config may hold": ("maskgit.config", ("check_sample_fields",)),
    "what a model can sample with": ("maskgit.sampling.arithmetic", ("model_sample_config",)),
    "class ids and the rows of a generate call": ("maskgit.sampling.arithmetic", ("class_ids", "batch_rows")),
    "decoding orders": ("maskgit.sampling.arithmetic", ("check_order", "halton_priority")),
    "cached decoding": ("maskgit.sampling.cache", ("CachedSteps", "padded_positions")),
    "a decode's step plan": ("maskgit.step_plan", ("cache_pattern", "full_steps", "guided_step")),
    "a decode's noise": ("maskgit.sampling.noise", ("RowGenerators", "chunk_seed", "seeded")),
    "precision": ("maskgit.inference.precision", ("resolve_precision", "check_precision", "prepare", "amp_choice")),
    "process-wide speed settings": ("maskgit.inference.settings", ("Settings", "settings")),
    "weights files and their manifest": ("maskgit.storage.checkpoint", ("save_tensors", "write_manifest")),
    "joining a torchrun process group": ("maskgit.distributed", ("init_distributed",)),
    "a mask given as pixels": ("maskgit.storage.images", ("as_pixel_mask",)),
    "the configs": ("maskgit.config", ("SampleConfig", "TrainConfig", "TransformerConfig", "VQGANConfig")),
    "the one pipeline": ("maskgit.pipeline", ("Pipeline",)),
}


# The same name with another meaning, each with what it means there.
OTHER_MEANINGS = {
    ("maskgit.sampling.amused", "guide"): "the aMUSEd reference scheduler's guidance formula (its sampler setting)",
    ("maskgit.families.amused_train", "prepare"): "tokenizing and caption-encoding an aMUSEd fine-tuning run's data",
    ("maskgit.evaluation.samplers", "settings"): "one complete set of decoding settings a benchmark row compares",
}


def definitions(files: dict[str, Path]) -> dict[str, list[tuple[str, ast.AST]]]:
    """Top-level function and class definitions of every module: name -> [(module, node)]."""
    out: dict[str, list[tuple[str, ast.AST]]] = {}
    for mod, path in files.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.setdefault(node.name, []).append((mod, node))
    return out


def calls_name(node: ast.AST, name: str) -> bool:
    """Whether ``node``'s body calls ``name`` (as ``name(...)`` or ``something.name(...)``)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                return True
    return False


def concept_violations(files: dict[str, Path]) -> list[str]:
    defs, bad = definitions(files), []
    for concept, (owner, names) in CONCEPTS.items():
        for name in names:
            where = defs.get(name, [])
            if owner not in [m for m, _ in where]:
                bad.append(f"{concept}: {owner} does not define {name}")
            bad += [f"{concept}: {m} defines its own {name} (owned by {owner}; a face must call it)"
                    for m, node in where
                    if m != owner and (m, name) not in OTHER_MEANINGS and not calls_name(node, name)]
    return bad


def test_every_concept_is_written_in_its_owner_only():
    files = module_files()
    bad = concept_violations(files)
    assert not bad, "\n".join(bad)


def test_the_concept_check_sees_a_second_copy(tmp_path):
    """A module that writes its own mask_counts (not calling the owner's) is caught, a face that calls it is not."""
    files = module_files()
    copy = tmp_path / "copy.py"
    copy.write_text("def mask_counts(name, step, steps, n0, unknown):\n    return n0 - 1\n")
    face = tmp_path / "face.py"
    face.write_text("from maskgit.sampling import arithmetic\n\n\ndef mask_counts(*a):\n"
                    "    return arithmetic.mask_counts(*a)\n")
    assert any("maskgit.fake_copy defines its own mask_counts" in b
               for b in concept_violations({**files, "maskgit.fake_copy": copy}))
    assert concept_violations({**files, "maskgit.fake_face": face}) == concept_violations(files) == []
