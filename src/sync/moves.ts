/**
 * Files moved or renamed at the site, found in the plan of a delta: a new path whose file has the bytes, mode and mtime
 * of a file of the applied generation at a path the new generation no longer has. The plan hard-links it from its old
 * path as it does an unchanged file, instead of writing it again from local chunks (a year's ledger moved into
 * archive/ was a whole copy at the branch, and rsync sends it whole).
 */
import { Entry, indexOfPath, sameContent, sameMtime } from '../manifest/manifest.js';

/** Finds, for a new file with no old version at its path, the old file it was moved from. */
export class MovedFiles {
  /** Old files whose path is gone, by size; built on the first question. */
  private bySize?: Map<number, number[]>;

  /**
   * @param olds the applied generation's entries
   * @param usable the old files that may be linked (trusted as committed), by path
   * @param news the new generation's entries, in manifest order
   */
  constructor(
    private readonly olds: readonly Entry[],
    private readonly usable: ReadonlyMap<string, number>,
    private readonly news: readonly Entry[],
  ) {}

  /**
   * The index of the old entry `e` was moved from, if any; that entry is then taken: one old file serves one new path
   * (two paths sharing an inode would be one file at the branch where the site has two).
   */
  take(e: Entry): number | undefined {
    if (e.kind !== 'file' || e.size === 0) return undefined;
    const list = this.index().get(e.size);
    if (!list) return undefined;
    for (let k = 0; k < list.length; k++) {
      const o = this.olds[list[k]!]!;
      if (o.mode === e.mode && sameMtime(o.mtimeNs, e.mtimeNs) && sameContent(o, e)) return list.splice(k, 1)[0];
    }
    return undefined;
  }

  private index(): Map<number, number[]> {
    if (this.bySize) return this.bySize;
    this.bySize = new Map();
    for (const [p, i] of this.usable) {
      const o = this.olds[i]!;
      if (o.size === 0 || this.has(p)) continue;
      const list = this.bySize.get(o.size);
      if (list) list.push(i);
      else this.bySize.set(o.size, [i]);
    }
    return this.bySize;
  }

  /** Whether the new generation has an entry at `p`. */
  private has(p: string): boolean {
    return indexOfPath(this.news, p) >= 0;
  }
}
