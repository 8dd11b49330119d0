/**
 * Message IDs ordered by when they are next due: a binary min-heap with lazy deletion. Re-adding an ID
 * replaces its due time; stale heap entries are skipped when they surface.
 */
export class DueQueue {
  readonly #heap: { at: number; id: string }[] = [];
  readonly #due = new Map<string, number>();

  get size(): number {
    return this.#due.size;
  }

  set(id: string, at: number): void {
    this.#due.set(id, at);
    this.#push({ at, id });
  }

  delete(id: string): void {
    this.#due.delete(id);
  }

  /** Earliest due time, or undefined when empty. */
  peekTime(): number | undefined {
    this.#dropStale();
    return this.#heap[0]?.at;
  }

  /** Removes and returns the earliest ID due at or before `now`. */
  popDue(now: number): string | undefined {
    this.#dropStale();
    const top = this.#heap[0];
    if (!top || top.at > now) return undefined;
    this.#pop();
    this.#due.delete(top.id);
    return top.id;
  }

  #dropStale(): void {
    while (this.#heap.length > 0) {
      const top = this.#heap[0]!;
      if (this.#due.get(top.id) === top.at) return;
      this.#pop();
    }
  }

  #push(entry: { at: number; id: string }): void {
    const h = this.#heap;
    h.push(entry);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (h[parent]!.at <= h[i]!.at) break;
      [h[parent], h[i]] = [h[i]!, h[parent]!];
      i = parent;
    }
  }

  #pop(): void {
    const h = this.#heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let min = i;
      if (l < h.length && h[l]!.at < h[min]!.at) min = l;
      if (r < h.length && h[r]!.at < h[min]!.at) min = r;
      if (min === i) return;
      [h[min], h[i]] = [h[i]!, h[min]!];
      i = min;
    }
  }
}
