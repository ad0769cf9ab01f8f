"""Prompt formatting and tokenisation: chat template for instruct models, the boxed prompt for base models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from lit_dft.errors import LitDFTError

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
PromptStyle = Literal["auto", "chat", "plain", "qwen-boxed"]
# Qwen2.5-Math's evaluation prompt "qwen-boxed" (its math_eval.py, which the DFT paper's numbers use), as text: ChatML
# with a fixed system message and instruction, whatever the tokenizer's own chat template says.
QWEN_BOXED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}\n{instruction}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass
class PromptFormatter:
    """Turns (question, solution) pairs into prompt and response token ids."""

    tokenizer: PreTrainedTokenizerBase
    style: PromptStyle = "auto"
    system_prompt: str | None = None
    instruction: str | None = BOXED_INSTRUCTION

    def __post_init__(self) -> None:
        if self.style == "auto":
            self.style = "chat" if self.tokenizer.chat_template else "plain"
        if self.style == "chat" and not self.tokenizer.chat_template:
            raise LitDFTError("prompt_style 'chat' needs a tokenizer with a chat template; use 'plain'")
        if self.style == "qwen-boxed" and not all(t in self.tokenizer.get_vocab() for t in _CHATML_TOKENS):
            raise LitDFTError(
                "prompt_style 'qwen-boxed' needs a ChatML tokenizer (<|im_start|>, <|im_end|>), as Qwen's"
            )
        self._stop_ids = set(self.tokenizer.all_special_ids)

    def _user_content(self, question: str) -> str:
        return f"{question}\n{self.instruction}" if self.instruction else question

    def _messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": self._user_content(question)}]

    def prompt(self, question: str) -> str:
        """The text the model sees before its answer (also the generation prompt)."""
        if self.style == "plain":
            return self._user_content(question) + "\n"
        if self.style == "qwen-boxed":
            return QWEN_BOXED.format(question=question, instruction=BOXED_INSTRUCTION)
        return self.tokenizer.apply_chat_template(self._messages(question), tokenize=False, add_generation_prompt=True)

    def _response(self, question: str, prompt: str, solution: str) -> str:
        if self.style == "plain":
            return solution
        if self.style == "qwen-boxed":
            return solution + "<|im_end|>"
        messages = self._messages(question) + [{"role": "assistant", "content": solution}]
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise LitDFTError(
                "The chat template renders the prompt differently once the answer is added, so the prompt "
                "cannot be masked reliably; set data.prompt_style: plain"
            )
        return full[len(prompt) :].rstrip()

    def encode(self, questions: list[str], solutions: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt ids and response ids (ending with EOS or the end-of-turn token) for a batch of rows."""
        prompts = [self.prompt(q) for q in questions]
        responses = [self._response(q, p, s) for q, p, s in zip(questions, prompts, solutions)]
        prompt_ids = self.tokenizer(prompts, add_special_tokens=self.style == "plain")["input_ids"]
        response_ids = self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        response_ids = [ids if ids and ids[-1] in self._stop_ids else ids + [eos] for ids in response_ids]
        return prompt_ids, response_ids
