/** Plain-text tables for the bench report: one per scenario, metrics down, systems across. */

export interface Row {
  /** Printed only on the first row of a group (e.g. the load generator). */
  group: string;
  metric: string;
  cells: string[];
}

const MB = 1024 * 1024;

export function num(value: number | undefined, digits = 1): string {
  return value === undefined || !Number.isFinite(value) ? '' : value.toFixed(digits);
}

export function mb(bytes: number | undefined): string {
  return bytes === undefined || bytes <= 0 ? '' : (bytes / MB).toFixed(1);
}

/** smarthost / Postfix, blank when either side is missing. */
export function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 || a <= 0 ? '' : (a / b).toFixed(2);
}

export function formatTable(title: string, columns: string[], rows: Row[], notes: string[] = []): string {
  const groupWidth = Math.max(0, ...rows.map((r) => r.group.length));
  const metricWidth = Math.max(0, ...rows.map((r) => r.metric.length));
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => (r.cells[i] ?? '').length)));
  const line = (group: string, metric: string, cells: string[]) =>
    `  ${group.padEnd(groupWidth)}  ${metric.padEnd(metricWidth)}  ${cells.map((c, i) => c.padStart(widths[i]!)).join('   ')}`.trimEnd();
  const out = [title, line('', '', columns), `  ${'-'.repeat(groupWidth + metricWidth + 4 + widths.reduce((a, w) => a + w + 3, -3))}`];
  let previous = '';
  for (const r of rows) {
    out.push(line(r.group === previous ? '' : r.group, r.metric, r.cells));
    previous = r.group;
  }
  for (const n of notes) out.push(`  * ${n}`);
  return out.join('\n');
}
