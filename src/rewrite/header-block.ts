import addressparser from 'nodemailer/lib/addressparser';
import libmime from 'libmime';

/** One header field exactly as it stands in the message, continuation lines and final CRLF included. */
export interface HeaderField {
  /** Lowercased field name. */
  name: string;
  raw: Buffer;
}

export interface Mailbox {
  name: string;
  address: string;
}

/** Splits a header block (CRLF line endings, without the empty line that ends it) into fields. */
export function splitHeaderFields(block: Buffer): HeaderField[] {
  const fields: HeaderField[] = [];
  let start = 0;
  while (start < block.length) {
    let end = start;
    // A field runs until a line that does not start with white space (RFC 5322 folding).
    for (;;) {
      const nl = block.indexOf('\r\n', end);
      end = nl === -1 ? block.length : nl + 2;
      const next = block[end];
      if (end >= block.length || (next !== 0x20 && next !== 0x09)) break;
    }
    const raw = block.subarray(start, end);
    const colon = raw.indexOf(':');
    fields.push({ name: colon > 0 ? raw.subarray(0, colon).toString('latin1').trim().toLowerCase() : '', raw });
    start = end;
  }
  return fields;
}

/** The unfolded value of a field, with encoded words left as they are. */
export function fieldValue(field: HeaderField): string {
  const text = field.raw.toString('utf8');
  return text.slice(text.indexOf(':') + 1).replace(/\r\n(?=[ \t])/g, '').trim();
}

/** Mailboxes of an address header (From, Reply-To), group members flattened, display names decoded. */
export function parseMailboxes(value: string): Mailbox[] {
  const out: Mailbox[] = [];
  const visit = (entries: ReturnType<typeof addressparser>) => {
    for (const e of entries) {
      if ('group' in e && e.group) visit(e.group);
      else if (e.address) out.push({ name: decodeName(e.name ?? ''), address: e.address });
    }
  };
  visit(addressparser(value));
  return out;
}

function decodeName(name: string): string {
  try {
    return libmime.decodeWords(name);
  } catch {
    return name;
  }
}

/** "Name <address>" with the name quoted or encoded as RFC 2047 needs. */
export function formatMailbox(m: Mailbox): string {
  if (!m.name) return `<${m.address}>`;
  // eslint-disable-next-line no-control-regex
  const name = /[^\x20-\x7e]/.test(m.name) ? libmime.encodeWord(m.name, 'Q', 52) : `"${m.name.replace(/[\\"]/g, '\\$&')}"`;
  return `${name} <${m.address}>`;
}

/**
 * A header field, folded at white space so no line exceeds the recommended 78 characters where possible.
 * The white space goes to the start of the continuation line (afterSpace false): a line that starts with
 * anything else would begin a new field and cut the address off the From.
 */
export function formatField(name: string, value: string): Buffer {
  return Buffer.from(`${libmime.foldLines(`${name}: ${value}`, 76, false).replace(/\r?\n/g, '\r\n')}\r\n`, 'utf8');
}
