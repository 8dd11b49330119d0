/**
 * Reading a spooled message for the draft path with mailparser, streamed: attachments arrive one at a time
 * as streams and the parser waits until each is consumed and released, so at most one chunk of an attachment
 * is held at once. The draft path reads the message twice (first for the draft and the attachment sizes an
 * upload session must announce, then for the upload itself) rather than hold a 100 MB scan in memory.
 */
import type { Readable } from 'node:stream';
import { MailParser, type AttachmentStream, type HeaderLines, type MessageText } from 'mailparser';
import { fieldValue, parseMailboxes, type Mailbox } from '../../rewrite/header-block.js';

const PARSER_OPTIONS = {
  // Only the text and HTML as written are needed; no conversions, cid: links kept for inline attachments.
  skipHtmlToText: true,
  skipTextToHtml: true,
  skipImageLinks: true,
  skipTextLinks: true,
  // A DSN's machine-readable parts stay attachments instead of being folded into the text.
  keepDeliveryStatus: true,
  checksumAlgo: false as const,
};

export interface ParsedMessage {
  headerLines: HeaderLines;
  text: MessageText | undefined;
}

/**
 * Parses `source`, handing each attachment (in order, with its index) to `onAttachment`, which must consume
 * its content stream. Resolves with the header lines and the text once the whole message is read.
 */
export function parseMessage(source: Readable, onAttachment: (attachment: AttachmentStream, index: number) => Promise<void>): Promise<ParsedMessage> {
  return new Promise((resolve, reject) => {
    const parser = new MailParser(PARSER_OPTIONS);
    let headerLines: HeaderLines = [];
    let text: MessageText | undefined;
    let index = 0;
    let chain = Promise.resolve();
    let failed = false;
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      source.destroy();
      parser.destroy();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    parser.on('headerLines', (lines) => (headerLines = lines));
    parser.on('data', (data: AttachmentStream | MessageText) => {
      if (data.type === 'text') {
        text = data;
        return;
      }
      const i = index++;
      chain = chain.then(async () => {
        if (failed) {
          data.content.resume();
          data.release?.();
          return;
        }
        try {
          await onAttachment(data, i);
        } catch (err) {
          fail(err);
          return;
        }
        data.release?.();
      });
    });
    parser.on('end', () => void chain.then(() => !failed && resolve({ headerLines, text })));
    parser.on('error', fail);
    source.on('error', fail);
    source.pipe(parser);
  });
}

/** Unfolded value of every header line named `key` (lower case), in order. */
export function headerValues(lines: HeaderLines, key: string): string[] {
  return lines.filter((l) => l.key === key).map((l) => fieldValue({ name: key, raw: Buffer.from(l.line, 'utf8') }));
}

export function mailboxes(lines: HeaderLines, key: string): Mailbox[] {
  return headerValues(lines, key).flatMap(parseMailboxes);
}

/** Reads an attachment's content to the end, counting bytes; keeps them while `keep(sizeSoFar)` holds. */
export async function measure(content: Readable, keep: (sizeSoFar: number) => boolean): Promise<{ size: number; bytes?: Buffer }> {
  const chunks: Buffer[] = [];
  let size = 0;
  let keeping = true;
  for await (const chunk of content as AsyncIterable<Buffer>) {
    size += chunk.length;
    keeping &&= keep(size);
    if (keeping) chunks.push(chunk);
    else chunks.length = 0;
  }
  return keeping ? { size, bytes: Buffer.concat(chunks, size) } : { size };
}
