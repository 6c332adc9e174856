"""Document labels in the product's four languages."""

LABELS: dict[str, dict[str, str]] = {
    "en": {"invoice": "Invoice", "issued": "Issued", "due": "Due", "from": "From", "to": "Bill to",
           "description": "Description", "quantity": "Qty", "unit_price": "Unit price", "tax": "Tax",
           "amount": "Amount", "subtotal": "Subtotal", "total": "Total", "vat_id": "VAT ID",
           "pay": "Pay now", "iban": "Pay by transfer to IBAN"},
    "es": {"invoice": "Factura", "issued": "Emitida", "due": "Vence", "from": "Emisor", "to": "Cliente",
           "description": "Descripción", "quantity": "Cant.", "unit_price": "Precio unitario", "tax": "IVA",
           "amount": "Importe", "subtotal": "Base imponible", "total": "Total", "vat_id": "NIF",
           "pay": "Pagar ahora", "iban": "Transferencia al IBAN"},
    "pt": {"invoice": "Fatura", "issued": "Emitida", "due": "Vencimento", "from": "Emitente", "to": "Cliente",
           "description": "Descrição", "quantity": "Qtd.", "unit_price": "Preço unitário", "tax": "IVA",
           "amount": "Valor", "subtotal": "Subtotal", "total": "Total", "vat_id": "NIF",
           "pay": "Pagar agora", "iban": "Transferência para o IBAN"},
    "ro": {"invoice": "Factură", "issued": "Emisă", "due": "Scadentă", "from": "Furnizor", "to": "Client",
           "description": "Descriere", "quantity": "Cant.", "unit_price": "Preț unitar", "tax": "TVA",
           "amount": "Valoare", "subtotal": "Subtotal", "total": "Total", "vat_id": "CIF",
           "pay": "Plătește acum", "iban": "Transfer în IBAN"},
}  # fmt: skip
