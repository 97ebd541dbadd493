/**
 * The structure check (`deno task arch`): reads the relative imports of every module of the
 * program (tests, benchmarks and tools are left out) and fails on
 *
 * - an import cycle between files, and
 * - an import that goes up a layer, or sideways between two folders of one layer.
 *
 * The layers are {@linkcode LAYERS}, lowest first. A file may import files of its own folder
 * and of any lower layer, nothing else.
 *
 * @example
 * ```ts
 * import { checkStructure } from "./arch.ts";
 * const problems = await checkStructure(new URL("../", import.meta.url).pathname);
 * if (problems.length > 0) console.error(problems.join("\n"));
 * ```
 * @module
 */
import { dirname, join, relative, resolve } from "node:path";

/**
 * The program's folders by layer, lowest first. Each inner list is one layer; its folders
 * may not import one another.
 */
export const LAYERS: readonly (readonly string[])[] = [
  ["lib/util"],
  ["lib/config", "lib/cart"],
  ["lib/db", "lib/queue", "lib/archive", "lib/volume"],
  ["lib/store", "lib/staging"],
  ["lib/bundle", "lib/webhook"],
  ["lib/space"],
  ["threads"],
  ["http", "worker"],
  ["app"],
  ["."],
];

/** Folders whose files are not part of the program's layers. */
const OUTSIDE = ["tests", "bench", "tools", "examples", "docs", "dist", "var", "node_modules"];

/** The layer index of a file's folder, or undefined when the folder has none. */
function layerOf(folder: string): number | undefined {
  const i = LAYERS.findIndex((layer) => layer.includes(folder));
  return i < 0 ? undefined : i;
}

/** The relative specifiers a module's code imports (comments, and so doc examples, left out). */
export function importsOf(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const found: string[] = [];
  const patterns = [
    /\b(?:import|export)\b[^;"']*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) {
    for (const m of code.matchAll(pattern)) {
      if (m[1].startsWith(".")) found.push(m[1]);
    }
  }
  return found;
}

async function programFiles(root: string, dir = ""): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(join(root, dir))) {
    const path = dir ? `${dir}/${entry.name}` : entry.name;
    if (entry.isDirectory) {
      if (!entry.name.startsWith(".") && !OUTSIDE.includes(path)) {
        files.push(...await programFiles(root, path));
      }
    } else if (/\.tsx?$/.test(entry.name) && !/_test\.tsx?$/.test(entry.name)) {
      files.push(path);
    }
  }
  return files.sort();
}

/** Import cycles among `graph`'s files (Tarjan's strongly connected components). */
function cycles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (graph.get(v) ?? []).includes(v)) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

/** Checks the structure of the checkout at `root`; returns one sentence per problem. */
export async function checkStructure(root: string): Promise<string[]> {
  const files = await programFiles(root);
  const problems: string[] = [];
  const graph = new Map<string, string[]>();
  for (const file of files) {
    const folder = dirname(file);
    const layer = layerOf(folder);
    if (layer === undefined) {
      problems.push(`${file}: its folder ${folder}/ has no layer in tools/arch.ts LAYERS`);
    }
    const targets: string[] = [];
    for (const spec of importsOf(await Deno.readTextFile(join(root, file)))) {
      const target = relative(root, resolve(root, folder, spec));
      targets.push(target);
      const targetFolder = dirname(target);
      if (targetFolder === folder || layer === undefined) continue;
      const targetLayer = layerOf(targetFolder);
      if (targetLayer === undefined) {
        problems.push(`${file} imports ${target}, which is outside the program's layers`);
      } else if (targetLayer > layer) {
        problems.push(`${file} imports ${target}: an import up a layer (${folder}/ is below)`);
      } else if (targetLayer === layer) {
        problems.push(`${file} imports ${target}: ${folder}/ and ${targetFolder}/ share a layer`);
      }
    }
    graph.set(file, targets);
  }
  for (const cycle of cycles(graph)) problems.push(`an import cycle among ${cycle.join(", ")}`);
  return problems;
}

if (import.meta.main) {
  const root = resolve(new URL("../", import.meta.url).pathname);
  const problems = await checkStructure(root);
  if (problems.length > 0) {
    console.error(
      `The structure check failed (layers: tools/arch.ts):\n- ${problems.join("\n- ")}`,
    );
    Deno.exit(1);
  }
  console.log(`The structure holds: ${LAYERS.flat().length} folders in ${LAYERS.length} layers.`);
}
