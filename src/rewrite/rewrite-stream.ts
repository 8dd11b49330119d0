import { Transform, type TransformCallback } from 'node:stream';
import { SmtpError } from '../smtp-error.js';
import { editHeaderBlock, type HeaderEdits } from './sender.js';

const END_OF_HEADERS = Buffer.from('\r\n\r\n');
const MAX_HEADER_BYTES = 1024 * 1024;

/**
 * Rewrites the header block of a spooled message on its way to an upstream. Only the header block is held
 * (bounded); every body byte passes through untouched, so signatures over the body and large attachments
 * are unaffected.
 */
export class HeaderRewriteStream extends Transform {
  #head: Buffer[] = [];
  #headLength = 0;
  #done = false;

  constructor(private readonly edits: HeaderEdits) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    if (this.#done) return callback(null, chunk);
    this.#head.push(chunk);
    this.#headLength += chunk.length;
    const buffered = Buffer.concat(this.#head);
    // Search from a little before the new chunk so a separator split across chunks is found.
    const end = buffered.indexOf(END_OF_HEADERS, Math.max(0, this.#headLength - chunk.length - 3));
    if (end === -1) {
      this.#head = [buffered];
      if (this.#headLength > MAX_HEADER_BYTES) return callback(new SmtpError(554, '5.6.0', 'message header block too large to rewrite'));
      return callback();
    }
    this.#finish(buffered, end + 2);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (!this.#done) {
      // No empty line: the whole message is header (or has none); still rewrite what there is.
      const buffered = Buffer.concat(this.#head);
      const complete = buffered.length === 0 || buffered.subarray(-2).equals(Buffer.from('\r\n'));
      this.#finish(complete ? buffered : Buffer.concat([buffered, Buffer.from('\r\n')]), buffered.length + (complete ? 0 : 2));
    }
    callback();
  }

  #finish(buffered: Buffer, headerEnd: number): void {
    this.#done = true;
    this.#head = [];
    this.push(editHeaderBlock(buffered.subarray(0, headerEnd), this.edits));
    if (headerEnd < buffered.length) this.push(buffered.subarray(headerEnd));
  }
}
