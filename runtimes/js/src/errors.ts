/** A user-facing problem whose message is the whole story (one line): bad input, a bundle that must
 * not be used, or a bundle this runtime cannot run. The Python runtime's `RuntimeInputError`. */
export class RuntimeInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RuntimeInputError";
  }
}
